//! The PROXY protocol (v1 text and v2 binary, as HAProxy defines it), for
//! when Meridian sits behind an L4 load balancer: the balancer tells who
//! the client is before the HTTP bytes. It is read only from trusted peers;
//! from anyone else a PROXY header is just a malformed request.
//!
//! The header is looked at with `peek` and consumed exactly, so that not a
//! byte of the HTTP request behind it is taken.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest PROXY header read: v1 is at most 107 bytes; a v2 header with
/// addresses and a few TLVs fits easily.
const MAX_HEADER: usize = 536;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The peer sent an invalid header.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// The header did not arrive whole in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No PROXY header: the connection starts with the request.
    Absent,
    /// A header without a client address (`UNKNOWN`, `LOCAL`, a UNIX
    /// socket): the balancer's own connection, such as a health check.
    Local,
    /// The client's address as the balancer saw it.
    Client(SocketAddr),
}

/// Reads the PROXY header at the start of `stream`, if there is one,
/// waiting at most `limit` for all of it.
pub async fn read_header(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<Source, ProxyHeaderError> {
    tokio::time::timeout(limit, read(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(limit))?
}

async fn read(stream: &mut TcpStream) -> Result<Source, ProxyHeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        match parse(&buf[..n]) {
            Parsed::NotProxy => return Ok(Source::Absent),
            Parsed::Incomplete if n == MAX_HEADER => {
                return Err(ProxyHeaderError::Invalid("header too long".into()));
            }
            Parsed::Incomplete => {
                // More bytes are on their way; peek would see the same ones
                // at once. The wait is bounded by the caller's timeout.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Parsed::Invalid(e) => return Err(ProxyHeaderError::Invalid(e)),
            Parsed::Header { len, source } => {
                let mut consumed = vec![0u8; len];
                stream.read_exact(&mut consumed).await?;
                return Ok(source);
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    NotProxy,
    Incomplete,
    Invalid(String),
    Header { len: usize, source: Source },
}

/// Parses the start of a connection.
fn parse(bytes: &[u8]) -> Parsed {
    let starts = |sig: &[u8]| {
        let k = bytes.len().min(sig.len());
        bytes[..k] == sig[..k]
    };
    if !starts(V1_PREFIX) && !starts(V2_SIGNATURE) {
        return Parsed::NotProxy;
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        // A v1 header is one line of at most 107 bytes: once its end is
        // there, or should have been, more bytes cannot fix it.
        let v1_line_over = starts(V1_PREFIX)
            && bytes.len() >= V1_PREFIX.len()
            && (bytes.windows(2).any(|w| w == b"\r\n") || bytes.len() >= V1_MAX);
        if v1_line_over {
            return Parsed::Invalid("malformed v1 header".into());
        }
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Source::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Source::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => Source::Local,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => Source::Local,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_ipv4(command: u8) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command); // version 2, command
        h.push(0x11); // TCP over IPv4
        h.extend_from_slice(&12u16.to_be_bytes());
        h.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1]);
        h.extend_from_slice(&4711u16.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h
    }

    #[test]
    fn v1_headers_give_the_client() {
        let input = b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(input),
            Parsed::Header {
                len: 42,
                source: Source::Client("198.51.100.7:4711".parse().unwrap())
            }
        );
        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n";
        assert!(
            matches!(parse(input), Parsed::Header { source: Source::Client(a), .. } if a.ip() == "2001:db8::7".parse::<IpAddr>().unwrap())
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: Source::Local
            }
        ));
    }

    #[test]
    fn v2_headers_give_the_client_unless_local() {
        let mut input = v2_ipv4(1);
        let len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                len,
                source: Source::Client("198.51.100.7:4711".parse().unwrap())
            }
        );
        assert!(matches!(
            parse(&v2_ipv4(0)),
            Parsed::Header {
                source: Source::Local,
                ..
            }
        ));
    }

    #[test]
    fn partial_plain_and_broken_starts() {
        assert_eq!(parse(b"PROXY TCP4 198.51"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(&V2_SIGNATURE[..5]), Parsed::Incomplete);
        assert_eq!(parse(&v2_ipv4(1)[..20]), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotProxy);
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Invalid(_)
        ));
    }
}
