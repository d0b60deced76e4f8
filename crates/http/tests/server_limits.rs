//! The serving limits, on a real socket: slow headers, oversized headers,
//! load shedding and the request timeout.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use ledger_http::server::{limit, ConnectionLimits, Limits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn serve(router: Router, connection: ConnectionLimits) -> std::net::SocketAddr {
    let server = Server::bind_with_limits("127.0.0.1:0".parse().unwrap(), router, connection)
        .await
        .unwrap();
    let address = server.local_addr();
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    address
}

fn routes(limits: Limits) -> Router {
    let slow = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "slow"
            }),
        );
    limit(slow, limits).route("/healthz", get(|| async { "ok" }))
}

/// Reads until the server closes the connection (or `bound` passes).
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test]
async fn a_client_sending_its_headers_slowly_is_disconnected() {
    let connection = ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let address = serve(routes(Limits::default()), connection).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    // One header line every 300 ms: the head never completes within 1 s.
    stream.write_all(b"GET /fast HTTP/1.1\r\n").await.unwrap();
    for index in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let line = format!("x-slow-{index}: 1\r\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let answer = read_until_closed(&mut stream, Duration::from_secs(3))
        .await
        .expect("the server closes the connection");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3_500),
        "disconnected after {elapsed:?}"
    );
    assert!(!answer.contains("fast"), "{answer}");

    // An idle connection that sends nothing is cut off too.
    let mut idle = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut idle, Duration::from_secs(3))
        .await
        .expect("an idle connection is closed");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A client sending its request at once is served.
    let mut quick = TcpStream::connect(address).await.unwrap();
    quick
        .write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut quick, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_64_kib_header_gets_431_and_the_connection_is_closed() {
    let address = serve(routes(Limits::default()), ConnectionLimits::default()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let request = format!("GET /fast HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    // The server may close before reading it all.
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection is closed");
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got {:?}",
        answer.lines().next()
    );

    // A head just under the limit is served.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let fits = "a".repeat(16 * 1024);
    let request =
        format!("GET /fast HTTP/1.1\r\nhost: x\r\nx-big: {fits}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_shed_with_a_problem() {
    let limits = Limits {
        in_flight_requests_max: 1,
        request_timeout: Duration::from_secs(60),
    };
    let address = serve(routes(limits), ConnectionLimits::default()).await;
    // One slow request holds the only slot (the limit is shared by every route).
    let holder = tokio::spawn(reqwest::get(format!("http://{address}/slow")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = reqwest::get(format!("http://{address}/fast"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    // Routes outside the limit are still served.
    let answer = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    holder.abort();
}

#[tokio::test]
async fn a_request_past_the_timeout_gets_a_problem() {
    let limits = Limits {
        in_flight_requests_max: 8,
        request_timeout: Duration::from_millis(200),
    };
    let address = serve(routes(limits), ConnectionLimits::default()).await;
    let started = Instant::now();
    let answer = reqwest::get(format!("http://{address}/slow"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(answer.status(), 504);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "timeout");
    assert_eq!(body["detail"], "the request was not answered within 200ms");
    // The slot was given back.
    let answer = reqwest::get(format!("http://{address}/fast"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
