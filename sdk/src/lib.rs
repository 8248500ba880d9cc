//! The Gatehouse plugin SDK.
//!
//! Plugin authors will implement a `Filter` trait here and export it with one macro; the Plugins issue
//! fills this crate in. It exists now so the workspace layout is final from the first commit.
#![deny(missing_docs)]
