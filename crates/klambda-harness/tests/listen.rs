//! Clients that try to hold the server, over real TCP against [`serve_router`]: connections
//! that never finish their headers are closed at the header deadline while genuine requests are
//! served meanwhile; a body that stops arriving ends at the body deadline with a problem
//! document; connections above the cap are closed as they arrive and the server serves again
//! once the held ones time out.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use klambda_harness::listen::{ConnectionLimits, serve_router};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A server echoing request bodies, within `limits`; its address.
async fn server(limits: ConnectionLimits) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let router = Router::new()
        .route("/", post(|body: Bytes| async move { body }))
        .layer(axum::middleware::map_response(
            klambda_harness::problem::as_problem,
        ));
    tokio::spawn(serve_router(
        listener,
        router,
        std::future::pending(),
        Duration::from_secs(1),
        limits,
    ));
    Ok(address)
}

/// A whole request on a fresh connection: the status line of the answer.
async fn genuine(address: std::net::SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await??;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Whether the server closed `stream` (a read ends) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_shed_and_genuine_requests_served() -> Result<()> {
    let address = server(ConnectionLimits {
        header_read: Duration::from_secs(1),
        ..ConnectionLimits::default()
    })
    .await?;
    let mut flood = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").await?;
        flood.push(stream);
    }
    let started = Instant::now();
    ensure!(
        genuine(address).await? == "HTTP/1.1 200 OK",
        "a genuine request during the flood"
    );
    let mut held = 0;
    for stream in &mut flood {
        if !closed(stream, Duration::from_secs(3)).await {
            held += 1;
        }
    }
    ensure!(held == 0, "{held} of 500 half-open connections still held");
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "shed after {:?}",
        started.elapsed()
    );
    // An idle keep-alive connection ends at the same deadline.
    let mut idle = TcpStream::connect(address).await?;
    ensure!(
        closed(&mut idle, Duration::from_secs(3)).await,
        "an idle connection stayed"
    );
    Ok(())
}

#[tokio::test]
async fn a_body_that_stops_arriving_ends_at_its_deadline() -> Result<()> {
    let address = server(ConnectionLimits {
        body_read: Duration::from_secs(1),
        ..ConnectionLimits::default()
    })
    .await?;
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b")
        .await?;
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..read]);
    ensure!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("application/problem+json"),
        "{answer}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn connections_above_the_cap_are_closed_until_held_ones_end() -> Result<()> {
    let address = server(ConnectionLimits {
        header_read: Duration::from_secs(1),
        max_connections: 5,
        ..ConnectionLimits::default()
    })
    .await?;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(address).await?);
    }
    // Accepted in order: give the server a moment to take the five.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sixth = TcpStream::connect(address).await?;
    ensure!(
        closed(&mut sixth, Duration::from_millis(500)).await,
        "a sixth connection was kept"
    );
    // The five time out at the header deadline; the server serves again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(genuine(address).await? == "HTTP/1.1 200 OK");
    Ok(())
}
