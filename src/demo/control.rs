//! The demo's control port: `POST /down` makes the fake outpost answer 503 (an outage),
//! `POST /blackhole` makes it never answer, `POST /up` restores it. Demo only.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::outpost::{Behaviour, FakeOutpost};
use crate::body::Body;

/// Binds the control port on loopback and serves it in the background.
pub async fn start(outpost: FakeOutpost) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let outpost = outpost.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let outpost = outpost.clone();
                async move { Ok::<_, Infallible>(control(&outpost, req.uri().path())) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}

fn control(outpost: &FakeOutpost, path: &str) -> Response<Body> {
    let (status, text) = match path {
        "/down" => {
            outpost.set_behaviour(Behaviour::Status(503));
            (StatusCode::OK, "outpost now answers 503\n")
        }
        "/blackhole" => {
            outpost.set_behaviour(Behaviour::BlackHole);
            (StatusCode::OK, "outpost now never answers\n")
        }
        "/up" => {
            outpost.set_behaviour(Behaviour::Normal);
            (StatusCode::OK, "outpost back to normal\n")
        }
        _ => (StatusCode::NOT_FOUND, "use POST /down, /blackhole or /up\n"),
    };
    let mut resp = Response::new(Body::full(text));
    *resp.status_mut() = status;
    resp
}
