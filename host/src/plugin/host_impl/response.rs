//! The `response` interface: the response on its way to the client, beyond its fields.

use http::StatusCode;
use wasmtime::Result;

use super::HostState;
use super::wit::ErrorCode;
use crate::plugin::bindings::gatehouse::plugin::response;

impl response::Host for HostState {
    fn status(&mut self) -> Result<u16> {
        Ok(self.response()?.status().as_u16())
    }

    fn set_status(&mut self, status: u16) -> Result<Result<(), ErrorCode>> {
        Ok(match StatusCode::from_u16(status) {
            Ok(s) => {
                *self.response()?.status_mut() = s;
                Ok(())
            }
            Err(_) => Err(ErrorCode::InvalidStatus),
        })
    }
}
