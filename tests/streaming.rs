//! Bodies are streamed, never buffered whole: 256 MiB each way through the real binary with
//! its resident memory watched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

const SIZE: u64 = 256 * 1024 * 1024;
const MAX_GROWTH_KIB: u64 = 64 * 1024;

#[tokio::test]
async fn large_upload_and_download_stream_with_flat_memory() {
    let clone = spawn_clone("big");
    let lb = BinLb::start(&config_text("round-robin", &[(&clone, 1)], ""));
    // Warm up (first connection, pools, allocator arenas) before the baseline.
    assert_eq!(get(lb.addr, "/").await.status, 200);
    let baseline = lb.status_kib("VmRSS");

    // Upload: the clone checksums what it receives.
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "t")
        .body(PatternBody::new(SIZE))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let want = PatternBody::checksum(SIZE);
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("{} {}", SIZE, want.value())
    );

    // Download: checksum what arrives, frame by frame.
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/download?bytes={SIZE}"))
        .header("host", "t")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Checksum::default();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got.update(d);
        }
    }
    assert_eq!(got.len, SIZE);
    assert_eq!(got.value(), want.value());

    let peak = lb.status_kib("VmHWM");
    let growth = peak.saturating_sub(baseline);
    eprintln!("clonelb RSS baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "resident memory grew by {growth} KiB (baseline {baseline} KiB, peak {peak} KiB)"
    );
}
