//! `GET /metrics` over HTTP on the glommio control plane. Requests are parsed with
//! `httparse` (hyper's parser); anything but `GET /metrics` gets 404 or 405. One request per
//! connection (`Connection: close`), bounded header size, a read timeout.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

/// Largest request head accepted.
const MAX_HEAD: usize = 8192;

/// Serve `/metrics` on `addr` until the executor ends. Binding errors are returned at once.
pub fn serve_http(addr: SocketAddr) -> Result<glommio::Task<()>, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    Ok(glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(async move {
                        let _ = glommio::timer::timeout(Duration::from_secs(10), async move {
                            handle(stream).await;
                            Ok(())
                        })
                        .await;
                    })
                    .detach();
                }
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            };
        }
    }))
}

async fn handle(mut stream: glommio::net::TcpStream) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let (status, body): (&str, String) = loop {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {
                break match (req.method, req.path.map(|p| p.split('?').next().unwrap_or(p))) {
                    (Some("GET"), Some("/metrics")) => ("200 OK", super::render()),
                    (Some("GET"), Some("/")) => {
                        ("200 OK", "sheepdev: metrics at /metrics\n".into())
                    }
                    (Some("GET"), _) => ("404 Not Found", "not found\n".into()),
                    _ => ("405 Method Not Allowed", "only GET\n".into()),
                };
            }
            Ok(httparse::Status::Partial) if n < buf.len() => continue,
            _ => break ("400 Bad Request", "bad request\n".into()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.close().await;
}
