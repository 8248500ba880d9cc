//! What one plugin call costs, in process with hot caches: the built-in router choosing a target
//! (a static prefix, stripped), and with `FIXTURES` naming the fixtures' wasm directory (as
//! `bench/plugins.sh` does) one and three no-op plugins and the rate-limit fixture.
//!
//! Run: `cargo bench -p gatehouse --features bench --bench plugin_call`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::bench::{
    Chain, Exchange, Isolation, MEMORY_LIMIT, Metrics, OnError, PluginConfig, PluginSource,
    Progress, SharedStore, StoreErrors, TIME_LIMIT,
};

fn plugin(name: &str, source: PluginSource, config_json: &str) -> PluginConfig {
    PluginConfig {
        name: name.to_string(),
        source,
        config_json: config_json.to_string(),
        time_limit: TIME_LIMIT,
        memory_limit: MEMORY_LIMIT,
        on_error: OnError::Fail,
        store_errors: StoreErrors::Open,
        isolation: Isolation::Pooled,
        hosts: Vec::new(),
        paths: Vec::new(),
        namespace: name.to_string(),
    }
}

fn exchange(client: Option<std::net::SocketAddr>) -> Box<Exchange> {
    let (parts, ()) = http::Request::get("/static/app.css")
        .header("host", "shop.example.org")
        .header("user-agent", "bench")
        .body(())
        .expect("request")
        .into_parts();
    Box::new(Exchange::new(parts, None, client.map(|a| a.ip()), false))
}

fn bench_chain(c: &mut Criterion, label: &str, plugins: &[PluginConfig]) {
    let store = Arc::new(SharedStore::new(1 << 20, 1 << 20));
    let metrics = Arc::new(Metrics::new());
    let targets = ["app".to_string(), "assets".to_string()];
    let chain =
        Chain::load(plugins, &targets, store, &metrics, 1 << 20, None).expect("load the chain");
    let mut ex = exchange(None);
    c.bench_function(label, |b| {
        b.iter(|| {
            let mut progress = Progress::default();
            black_box(chain.on_request(&mut ex, &mut progress).is_ok())
        })
    });
}

fn benches(c: &mut Criterion) {
    let routes = r#"{"routes": [
        {"path": "/static/", "target": "assets", "strip_prefix": true},
        {"host": "*.example.com", "path": "/api", "target": "app"},
        {"path": "/", "target": "app"}
    ]}"#;
    bench_chain(
        c,
        "router on-request",
        &[plugin(
            "router",
            PluginSource::Builtin("router".into()),
            routes,
        )],
    );
    if let Some(dir) = std::env::var_os("FIXTURES").map(PathBuf::from) {
        let one = plugin("noop", PluginSource::File(dir.join("noop.wasm")), "{}");
        bench_chain(c, "1 no-op on-request", std::slice::from_ref(&one));
        bench_chain(c, "3 no-op on-request", &[one.clone(), one.clone(), one]);
        let ratelimit = plugin(
            "rate-limit",
            PluginSource::Builtin("rate-limit".into()),
            r#"{"rate": 1000000000, "per": "1s", "headers": false}"#,
        );
        bench_chain(c, "ratelimit on-request", std::slice::from_ref(&ratelimit));
        let headers = plugin(
            "headers",
            PluginSource::Builtin("headers".into()),
            r#"{"response": {"set": {"x-frame-options": "DENY", "x-content-type-options": "nosniff"}}}"#,
        );
        let router = plugin(
            "router",
            PluginSource::Builtin("router".into()),
            r#"{"routes": [{"path": "/admin/", "redirect": "/"}, {"path": "/", "target": "app"}]}"#,
        );
        bench_request(c, &[router, headers, ratelimit]);
    }
}

/// The realistic chain of `bench/plugins.sh` over a whole request: on-request, then on-response
/// on a response with the headers a static file has.
fn bench_request(c: &mut Criterion, plugins: &[PluginConfig]) {
    let store = Arc::new(SharedStore::new(1 << 20, 1 << 20));
    let metrics = Arc::new(Metrics::new());
    let targets = ["app".to_string()];
    let chain =
        Chain::load(plugins, &targets, store, &metrics, 1 << 20, None).expect("load the chain");
    let mut ex = exchange(Some(([127, 0, 0, 1], 40000).into()));
    c.bench_function("router + headers + ratelimit, one request", |b| {
        b.iter(|| {
            let mut progress = Progress::default();
            let served = chain.on_request(&mut ex, &mut progress).is_ok();
            ex.response = Some(
                http::Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("content-length", "1024")
                    .header("etag", "\"400-5f2b\"")
                    .body(gatehouse::bench::Body::Empty)
                    .expect("response"),
            );
            let answered = chain.on_response(&mut ex, progress.ran).is_ok();
            black_box(ex.response.take());
            black_box(served && answered)
        })
    });
}

criterion_group!(plugin_calls, benches);
criterion_main!(plugin_calls);
