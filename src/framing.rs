//! Follows the framing of HTTP/1 requests on a client connection's raw
//! bytes, beneath hyper, to catch what hyper resolves without telling the
//! application. A head that carries both `Content-Length` and
//! `Transfer-Encoding` is read by hyper as chunked, with the length dropped
//! (RFC 9112 §6.3 allows that), but it is the classic request-smuggling
//! vector and Meridian refuses it: the scanner notes which request on the
//! connection carried both before hyper parses it, and the service refuses
//! that request and every later one on the connection.
//!
//! The scanner keeps a few words of state and never copies a byte. It reads
//! heads line by line and steps over bodies by their length, so its cost is
//! a pass over each head. Whatever it cannot follow (a malformed head or
//! chunk, which hyper refuses too) stops it, and the requests after that
//! point are refused.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A head longer than this is beyond every limit hyper is configured with:
/// hyper refuses it, so the scanner stops following.
const MAX_HEAD: usize = 1024 * 1024;

/// Why the framing of a request could not be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// `Content-Length` and `Transfer-Encoding` in one head.
    LengthAndCoding,
    /// A head, a `Content-Length` or a chunk that does not follow RFC 9112.
    Malformed,
}

impl Ambiguity {
    /// One sentence for the client and the log.
    pub fn reason(self) -> &'static str {
        match self {
            Ambiguity::LengthAndCoding => {
                "A request must not carry both Content-Length and Transfer-Encoding."
            }
            Ambiguity::Malformed => "The request's framing could not be read unambiguously.",
        }
    }

    fn code(self) -> u8 {
        match self {
            Ambiguity::LengthAndCoding => 1,
            Ambiguity::Malformed => 2,
        }
    }

    fn from_code(code: u8) -> Self {
        if code == 1 {
            Ambiguity::LengthAndCoding
        } else {
            Ambiguity::Malformed
        }
    }
}

/// A request's framing was ambiguous: a request extension set by the
/// connection for the proxy, which refuses the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous(pub Ambiguity);

impl Ambiguous {
    /// The answer: `400`, and the connection closed.
    pub fn refusal(self) -> crate::strict::Refusal {
        crate::strict::Refusal {
            status: http::StatusCode::BAD_REQUEST,
            reason: self.0.reason(),
            close: true,
        }
    }
}

/// What the scanner found, shared between a connection's reader and its
/// service.
#[derive(Debug)]
pub struct Verdicts {
    /// The 1-based index of the first request whose framing is in doubt,
    /// or `u64::MAX`.
    first_ambiguous: AtomicU64,
    why: AtomicU8,
    /// HTTP/1 requests handed to the service so far.
    requests: AtomicU64,
    /// The connection was upgraded: what follows is not HTTP.
    upgraded: AtomicBool,
    /// Everything read so far ends between requests: no head or body has
    /// begun arriving without ending. Not updated once the scan stopped.
    at_rest: AtomicBool,
    /// The last write or flush could not complete: whoever writes to the
    /// connection still holds bytes the client has not been sent.
    unsent: AtomicBool,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            first_ambiguous: AtomicU64::new(u64::MAX),
            why: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            at_rest: AtomicBool::new(true),
            unsent: AtomicBool::new(false),
        }
    }
}

impl Verdicts {
    /// Called for each HTTP/1 request in the order hyper hands them over:
    /// why its framing is in doubt, if it is.
    pub fn next_request(&self) -> Option<Ambiguity> {
        let index = self.requests.fetch_add(1, Relaxed) + 1;
        (self.first_ambiguous.load(Relaxed) <= index)
            .then(|| Ambiguity::from_code(self.why.load(Relaxed)))
    }

    /// The connection now carries an upgraded protocol.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// Takes an HTTP/1 request as hyper hands it over: marks it when its
    /// framing is in doubt, and says whether it asks to switch protocols.
    pub fn take_request<B>(&self, request: &mut http::Request<B>) -> bool {
        if let Some(why) = self.next_request() {
            request.extensions_mut().insert(Ambiguous(why));
        }
        request.headers().contains_key(http::header::UPGRADE)
    }

    /// Notes the answer to a request that asked to switch protocols:
    /// whether it switched, which the client does only after the `101`.
    pub fn answered_upgrade(&self, status: http::StatusCode) -> bool {
        let switched = status == http::StatusCode::SWITCHING_PROTOCOLS;
        if switched {
            self.upgraded();
        }
        switched
    }

    /// Whether the connection was upgraded.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Relaxed)
    }

    /// Whether everything read so far ends between requests.
    pub fn at_rest(&self) -> bool {
        self.at_rest.load(Relaxed)
    }

    /// Whether the last write or flush on the connection could not
    /// complete, so that bytes wait to be sent.
    pub fn unsent(&self) -> bool {
        self.unsent.load(Relaxed)
    }

    fn note_write(&self, pending: bool) {
        // Stored only on a change: most writes leave it as it was.
        if self.unsent.load(Relaxed) != pending {
            self.unsent.store(pending, Relaxed);
        }
    }
}

/// A client connection's reader, scanning what hyper will read.
#[derive(Debug)]
pub struct Framed<IO> {
    inner: IO,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<IO> Framed<IO> {
    /// Wraps a client connection.
    pub fn new(inner: IO, verdicts: Arc<Verdicts>) -> Self {
        Framed {
            inner,
            scanner: Scanner::default(),
            verdicts,
        }
    }

    /// The connection beneath.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Whether the last request handed to the service was read to its end
    /// and no further, when `unread` bytes read from the connection have
    /// not been consumed: only then can the next request be read from
    /// where hyper left off.
    pub fn at_end_of_last_request(&self, unread: usize) -> bool {
        !self.verdicts.is_upgraded()
            && self
                .scanner
                .ended_at(self.verdicts.requests.load(Relaxed), unread)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Framed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !this.scanner.stopped() && !this.verdicts.upgraded.load(Relaxed) {
            this.scanner.feed(&buf.filled()[before..]);
            this.verdicts
                .at_rest
                .store(this.scanner.state == State::Idle, Relaxed);
            if let Some((index, why)) = this.scanner.ambiguous {
                this.verdicts.why.store(why.code(), Relaxed);
                this.verdicts.first_ambiguous.store(index, Relaxed);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Framed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.verdicts.note_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.verdicts.note_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.verdicts.note_write(polled.is_pending());
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the scanner is in the stream of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: empty lines may precede a request line.
    Idle,
    /// In a request line; `matched` bytes of it agree with HTTP/2's
    /// preface so far (`u8::MAX` once they differ).
    RequestLine { matched: u8 },
    /// At the start of a field line, or of the empty line ending the head.
    LineStart,
    /// A CR at the start of a line: the head ends at the LF.
    EndCr,
    /// In a field name; `matched` bytes of it agree with `content-length`
    /// (`cl`) or `transfer-encoding` (`te`) so far.
    Name { matched: u8, cl: bool, te: bool },
    /// In a field value.
    Value(Field),
    /// In a `Content-Length` body.
    Body { remaining: u64 },
    /// In a chunk-size line: its value so far, whether a digit was seen and
    /// whether the size has ended (whitespace or an extension followed).
    ChunkSize {
        size: u64,
        digits: bool,
        ended: bool,
    },
    /// In a chunk's data.
    ChunkData { remaining: u64 },
    /// After a chunk's data: its CRLF, `cr` once the CR is seen.
    ChunkEnd { cr: bool },
    /// At the start of a trailer line, or of the empty line ending the body.
    TrailerStart,
    /// In a trailer line.
    Trailer,
    /// A CR at the start of a trailer line.
    TrailerCr,
    /// The connection speaks something else (HTTP/2, an upgrade), or its
    /// framing was lost: nothing more is followed.
    Stopped,
}

/// The value of a field that decides the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Any other field: skipped to the end of the line.
    Other,
    /// `Content-Length`: the digits so far, and whether whitespace has
    /// followed them.
    Length {
        value: u64,
        digits: bool,
        ended: bool,
    },
    /// `Transfer-Encoding`: how much of the last coding matches `chunked`,
    /// whether it has ended, and whether it was longer.
    Coding {
        matched: u8,
        ended: bool,
        other: bool,
    },
}

/// The framing found in the head being read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Head {
    bytes: usize,
    length: Option<u64>,
    coding: bool,
    chunked: bool,
}

/// The request-framing state machine: a pure function of the bytes fed.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    head: Head,
    /// Requests whose head has begun.
    requests: u64,
    /// The first request whose framing is in doubt, and why.
    ambiguous: Option<(u64, Ambiguity)>,
    /// Bytes fed so far.
    fed: u64,
    /// Requests read to their end.
    ended: u64,
    /// Where the last few requests ended (request `k` at `k % ENDS`), so
    /// that the end of one served request can be checked even when
    /// pipelined requests after it were read in the same pass.
    ends: [u64; ENDS],
}

/// How many request ends the scanner remembers.
const ENDS: usize = 4;

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Idle,
            head: Head::default(),
            requests: 0,
            ambiguous: None,
            fed: 0,
            ended: 0,
            ends: [0; ENDS],
        }
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const CHUNKED: &[u8] = b"chunked";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// The start of a chunk-size line.
const CHUNK_SIZE: State = State::ChunkSize {
    size: 0,
    digits: false,
    ended: false,
};

/// How much of `bytes` a body part with `remaining` bytes left takes, and
/// what is left of it then.
fn take(remaining: u64, bytes: &[u8]) -> (usize, u64) {
    let used = usize::try_from(remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
    (used, remaining - used as u64)
}

impl Scanner {
    /// The first request (1-based) whose framing is in doubt, and why.
    pub fn ambiguous(&self) -> Option<(u64, Ambiguity)> {
        self.ambiguous
    }

    /// Nothing more is followed on this connection.
    pub fn stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Reads the next bytes of the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let was_idle = self.state == State::Idle;
            let used = self.step(bytes);
            bytes = &bytes[used..];
            self.fed += used as u64;
            if !was_idle && self.state == State::Idle {
                self.ended = self.requests;
                self.ends[(self.requests % ENDS as u64) as usize] = self.fed;
            }
        }
    }

    /// Whether request `request` (1-based) ended exactly where the bytes
    /// fed but `unread` end: its head and body were consumed, and nothing
    /// of the next request was.
    pub fn ended_at(&self, request: u64, unread: usize) -> bool {
        let Some(consumed) = self.fed.checked_sub(unread as u64) else {
            return false;
        };
        if request == 0 {
            // Before the first request: nothing may have been consumed.
            return consumed == 0 && !self.stopped();
        }
        !self.stopped()
            && self.ended >= request
            && self.ended - request < ENDS as u64
            && self.ends[(request % ENDS as u64) as usize] == consumed
    }

    /// Gives up on the connection: `index` and the requests after it are
    /// refused.
    fn lose(&mut self, index: u64, why: Ambiguity) {
        self.ambiguous.get_or_insert((index, why));
        self.state = State::Stopped;
    }

    /// Consumes the start of `bytes`, returning how much, and bounds the
    /// head.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let in_head = matches!(
            self.state,
            State::RequestLine { .. }
                | State::LineStart
                | State::EndCr
                | State::Name { .. }
                | State::Value(_)
        );
        let used = self.advance(bytes);
        if in_head {
            self.head.bytes += used;
            if self.head.bytes > MAX_HEAD {
                self.lose(self.requests, Ambiguity::Malformed);
            }
        }
        used
    }

    /// Consumes the start of `bytes`, returning how much.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        match self.state {
            State::Stopped => bytes.len(),
            State::Idle => {
                let skipped = bytes
                    .iter()
                    .position(|&b| b != b'\r' && b != b'\n')
                    .unwrap_or(bytes.len());
                if skipped < bytes.len() {
                    self.requests += 1;
                    self.head = Head::default();
                    self.state = State::RequestLine { matched: 0 };
                }
                skipped
            }
            State::RequestLine { matched } => {
                let mut matched = usize::from(matched);
                for (i, &b) in bytes.iter().enumerate() {
                    if matched < PREFACE.len() && PREFACE[matched] == b {
                        matched += 1;
                        if matched == PREFACE.len() {
                            // HTTP/2 by prior knowledge.
                            self.state = State::Stopped;
                            return bytes.len();
                        }
                        continue;
                    }
                    // Not the preface: the rest of the line is skipped.
                    self.state = State::RequestLine { matched: u8::MAX };
                    return i + self.line_end(&bytes[i..], State::LineStart);
                }
                self.state = State::RequestLine {
                    matched: matched as u8,
                };
                bytes.len()
            }
            State::LineStart => match bytes[0] {
                b'\r' => {
                    self.state = State::EndCr;
                    1
                }
                b'\n' => {
                    self.end_head();
                    1
                }
                // Obsolete line folding: hyper refuses it.
                b' ' | b'\t' => {
                    self.lose(self.requests, Ambiguity::Malformed);
                    bytes.len()
                }
                _ => {
                    self.state = State::Name {
                        matched: 0,
                        cl: true,
                        te: true,
                    };
                    0
                }
            },
            State::EndCr => {
                if bytes[0] == b'\n' {
                    self.end_head();
                } else {
                    self.lose(self.requests, Ambiguity::Malformed);
                }
                1
            }
            State::Name { matched, cl, te } => {
                let (mut matched, mut cl, mut te) = (usize::from(matched), cl, te);
                for (i, &b) in bytes.iter().enumerate() {
                    if b == b':' {
                        let field = if cl && matched == CONTENT_LENGTH.len() {
                            Field::Length {
                                value: 0,
                                digits: false,
                                ended: false,
                            }
                        } else if te && matched == TRANSFER_ENCODING.len() {
                            Field::Coding {
                                matched: 0,
                                ended: false,
                                other: false,
                            }
                        } else {
                            Field::Other
                        };
                        self.state = State::Value(field);
                        return i + 1;
                    }
                    if b == b'\n' || b == b'\r' {
                        // A field line without a colon.
                        self.lose(self.requests, Ambiguity::Malformed);
                        return bytes.len();
                    }
                    let lower = b.to_ascii_lowercase();
                    cl &= CONTENT_LENGTH.get(matched) == Some(&lower);
                    te &= TRANSFER_ENCODING.get(matched) == Some(&lower);
                    matched = (matched + 1).min(usize::from(u8::MAX));
                    if !cl && !te {
                        // Neither: the rest of the line is skipped.
                        self.state = State::Value(Field::Other);
                        return i + 1;
                    }
                }
                self.state = State::Name {
                    matched: matched as u8,
                    cl,
                    te,
                };
                bytes.len()
            }
            State::Value(Field::Other) => self.line_end(bytes, State::LineStart),
            State::Value(field) => self.value(field, bytes),
            State::Body { remaining } => {
                let (used, remaining) = take(remaining, bytes);
                self.state = if remaining == 0 {
                    State::Idle
                } else {
                    State::Body { remaining }
                };
                used
            }
            State::ChunkSize {
                mut size,
                mut digits,
                mut ended,
            } => {
                for (i, &b) in bytes.iter().enumerate() {
                    if b == b'\n' {
                        if !digits {
                            self.lose(self.requests + 1, Ambiguity::Malformed);
                            return bytes.len();
                        }
                        self.state = if size == 0 {
                            State::TrailerStart
                        } else {
                            State::ChunkData { remaining: size }
                        };
                        return i + 1;
                    }
                    match (ended, (b as char).to_digit(16)) {
                        (false, Some(d)) => {
                            let Some(next) =
                                size.checked_mul(16).and_then(|s| s.checked_add(d.into()))
                            else {
                                self.lose(self.requests + 1, Ambiguity::Malformed);
                                return bytes.len();
                            };
                            size = next;
                            digits = true;
                        }
                        _ if !digits => {
                            self.lose(self.requests + 1, Ambiguity::Malformed);
                            return bytes.len();
                        }
                        // Whitespace, an extension, the CR: the size has
                        // ended, and hyper checks what follows.
                        _ => ended = true,
                    }
                }
                self.state = State::ChunkSize {
                    size,
                    digits,
                    ended,
                };
                bytes.len()
            }
            State::ChunkData { remaining } => {
                let (used, remaining) = take(remaining, bytes);
                self.state = if remaining == 0 {
                    State::ChunkEnd { cr: false }
                } else {
                    State::ChunkData { remaining }
                };
                used
            }
            State::ChunkEnd { cr } => {
                match (cr, bytes[0]) {
                    (false, b'\r') => self.state = State::ChunkEnd { cr: true },
                    (true, b'\n') => self.state = CHUNK_SIZE,
                    _ => self.lose(self.requests + 1, Ambiguity::Malformed),
                }
                1
            }
            State::TrailerStart => {
                self.state = match bytes[0] {
                    b'\r' => State::TrailerCr,
                    b'\n' => State::Idle,
                    _ => State::Trailer,
                };
                1
            }
            State::TrailerCr => {
                if bytes[0] == b'\n' {
                    self.state = State::Idle;
                } else {
                    self.lose(self.requests + 1, Ambiguity::Malformed);
                }
                1
            }
            State::Trailer => self.line_end(bytes, State::TrailerStart),
        }
    }

    /// Skips to the end of the line, then goes to `next`.
    fn line_end(&mut self, bytes: &[u8], next: State) -> usize {
        match memchr(b'\n', bytes) {
            Some(end) => {
                self.state = next;
                end + 1
            }
            None => bytes.len(),
        }
    }

    /// Reads a `Content-Length` or `Transfer-Encoding` value up to the end
    /// of its line.
    fn value(&mut self, mut field: Field, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            let space = matches!(b, b' ' | b'\t' | b'\r');
            if b == b'\n' {
                self.end_field(field);
                if self.state != State::Stopped {
                    self.state = State::LineStart;
                }
                return i + 1;
            }
            match &mut field {
                Field::Length {
                    value,
                    digits,
                    ended,
                } => {
                    if space {
                        *ended |= *digits;
                    } else if b.is_ascii_digit() && !*ended {
                        let Some(next) = value
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        else {
                            self.lose(self.requests, Ambiguity::Malformed);
                            return bytes.len();
                        };
                        *value = next;
                        *digits = true;
                    } else {
                        // A sign, a list, a second number: hyper refuses
                        // all of them.
                        self.lose(self.requests, Ambiguity::Malformed);
                        return bytes.len();
                    }
                }
                Field::Coding {
                    matched,
                    ended,
                    other,
                } => {
                    if b == b',' {
                        (*matched, *ended, *other) = (0, false, false);
                    } else if space {
                        *ended |= *matched > 0 || *other;
                    } else if *ended {
                        *other = true;
                    } else {
                        let m = usize::from(*matched);
                        if !*other && CHUNKED.get(m) == Some(&b.to_ascii_lowercase()) {
                            *matched += 1;
                        } else {
                            *other = true;
                        }
                    }
                }
                Field::Other => unreachable!("skipped by memchr"),
            }
        }
        self.state = State::Value(field);
        bytes.len()
    }

    /// Records a framing field whose line has ended.
    fn end_field(&mut self, field: Field) {
        match field {
            Field::Length {
                value,
                digits: true,
                ..
            } => match self.head.length {
                Some(previous) if previous != value => {
                    self.lose(self.requests, Ambiguity::Malformed)
                }
                _ => self.head.length = Some(value),
            },
            Field::Length { .. } => self.lose(self.requests, Ambiguity::Malformed),
            Field::Coding { matched, other, .. } => {
                self.head.coding = true;
                // As hyper reads it: the last field's last coding decides.
                self.head.chunked = !other && usize::from(matched) == CHUNKED.len();
            }
            Field::Other => {}
        }
    }

    /// The head has ended: its framing decides what follows.
    fn end_head(&mut self) {
        let head = self.head;
        self.state = match (head.length, head.coding, head.chunked) {
            (Some(_), true, _) => {
                return self.lose(self.requests, Ambiguity::LengthAndCoding);
            }
            (None, true, true) => CHUNK_SIZE,
            (None, true, false) => return self.lose(self.requests, Ambiguity::Malformed),
            (Some(0) | None, false, _) => State::Idle,
            (Some(remaining), false, _) => State::Body { remaining },
        };
    }
}

/// The position of the first `needle` in `haystack`.
fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scanner's verdict on `input`, fed whole and then in every split
    /// into two pieces and byte by byte, which must all agree.
    fn verdict(input: &[u8]) -> Option<(u64, Ambiguity)> {
        let mut whole = Scanner::default();
        whole.feed(input);
        for split in 0..=input.len() {
            let mut parts = Scanner::default();
            parts.feed(&input[..split]);
            parts.feed(&input[split..]);
            assert_eq!(parts.ambiguous, whole.ambiguous, "split at {split}");
            assert_eq!(parts.requests, whole.requests, "split at {split}");
        }
        let mut bytes = Scanner::default();
        for b in input {
            bytes.feed(std::slice::from_ref(b));
        }
        assert_eq!(bytes.ambiguous, whole.ambiguous);
        assert_eq!(bytes.state, whole.state);
        whole.ambiguous
    }

    fn requests(input: &[u8]) -> u64 {
        let mut s = Scanner::default();
        s.feed(input);
        s.requests
    }

    /// Checks that each of `inputs` gets the verdict `expected`.
    fn each_gives(inputs: &[&[u8]], expected: Option<(u64, Ambiguity)>) {
        for input in inputs {
            assert_eq!(
                verdict(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    const LC: Option<(u64, Ambiguity)> = Some((1, Ambiguity::LengthAndCoding));

    #[test]
    fn plain_requests_pass() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict(input), None);
        assert_eq!(requests(input), 2);
    }

    #[test]
    fn length_and_coding_together_are_caught_in_either_order_and_any_case() {
        each_gives(
            &[
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-LENGTH:4\r\ntransfer-encoding:  gzip, chunked \r\n\r\n",
            b"POST / HTTP/1.1\nContent-Length: 0\nTransfer-Encoding: chunked\n\n",
            ],
            LC,
        );
    }

    #[test]
    fn the_second_request_is_named_when_it_is_the_smuggler() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdict(input), Some((2, Ambiguity::LengthAndCoding)));
    }

    #[test]
    fn a_content_length_body_is_stepped_over_even_when_it_looks_like_a_head() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(verdict(&input), None);
        assert_eq!(requests(&input), 2);
    }

    #[test]
    fn a_chunked_body_is_stepped_over_with_extensions_and_trailers() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n1D\r\nContent-Length: 5\r\n\r\nabcdefgh\r\n0\r\nX-Trailer: Content-Length: 1\r\n\r\n\
            GET /next HTTP/1.1\r\n\r\n";
        assert_eq!(verdict(input), None);
        assert_eq!(requests(input), 2);
    }

    #[test]
    fn names_that_only_begin_like_framing_fields_are_other_fields() {
        each_gives(
            &[
            &b"POST / HTTP/1.1\r\nContent-Length-X: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encodings: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ],
            None,
        );
    }

    #[test]
    fn malformed_framing_fields_stop_the_scan() {
        each_gives(
            &[
                &b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n"[..],
                b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chun ked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                b"POST / HTTP/1.1\r\ncontent-length\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: a\r\n\rX",
            ],
            Some((1, Ambiguity::Malformed)),
        );
    }

    #[test]
    fn repeated_equal_lengths_pass() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:  2 \r\n\r\nokGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdict(input), None);
        assert_eq!(requests(input), 2);
    }

    #[test]
    fn a_broken_chunk_loses_the_requests_after_it() {
        let inputs: Vec<Vec<u8>> = [
            "zz\r\n",
            "5\r\nhelloXX",
            "fffffffffffffffff1\r\n",
            "\r\n",
            "0\r\n\rX",
        ]
        .iter()
        .map(|body| {
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
        })
        .collect();
        let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        each_gives(&inputs, Some((2, Ambiguity::Malformed)));
    }

    #[test]
    fn http2_prior_knowledge_stops_the_scan() {
        let mut s = Scanner::default();
        s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04");
        assert!(s.stopped());
        assert_eq!(s.ambiguous, None);
        // Request lines that merely begin like the preface are followed.
        let input = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\n\r\nxPRI * HTTP/1.1\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdict(input), Some((3, Ambiguity::LengthAndCoding)));
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped() {
        assert_eq!(requests(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n"), 1);
    }

    #[test]
    fn an_endless_head_stops_the_scan() {
        let mut s = Scanner::default();
        s.feed(b"GET / HTTP/1.1\r\nX: ");
        for _ in 0..(MAX_HEAD / 4096 + 1) {
            s.feed(&[b'a'; 4096]);
        }
        assert!(s.stopped());
        assert_eq!(s.ambiguous, Some((1, Ambiguity::Malformed)));
    }

    #[test]
    fn verdicts_name_the_first_ambiguous_request_and_every_later_one() {
        let v = Verdicts::default();
        v.first_ambiguous.store(2, Relaxed);
        v.why.store(Ambiguity::LengthAndCoding.code(), Relaxed);
        assert_eq!(v.next_request(), None);
        assert_eq!(v.next_request(), Some(Ambiguity::LengthAndCoding));
        assert_eq!(v.next_request(), Some(Ambiguity::LengthAndCoding));
    }

    fn fed(input: &[u8]) -> Scanner {
        let mut s = Scanner::default();
        s.feed(input);
        s
    }

    #[test]
    fn a_request_without_a_body_ends_after_its_head() {
        let s = fed(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(s.ended_at(1, 0));
        assert!(!s.ended_at(1, 1), "a byte of the head unconsumed");
        assert!(!s.ended_at(2, 0), "there is no second request");
        assert!(!s.ended_at(0, 0), "the first request was consumed");
        let partial = b"GET / HT";
        assert!(
            fed(partial).ended_at(0, partial.len()),
            "nothing consumed yet"
        );
        assert!(!fed(partial).ended_at(0, 1));
    }

    #[test]
    fn a_body_not_read_to_its_end_is_not_an_end() {
        let head = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n";
        let mut s = fed(head);
        assert!(!s.ended_at(1, 0), "the body has not arrived");
        s.feed(b"abc");
        assert!(!s.ended_at(1, 0));
        s.feed(b"de");
        assert!(s.ended_at(1, 0));
        assert!(!s.ended_at(1, 2), "two bytes of the body were left unread");
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let mut s = fed(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n");
        assert!(!s.ended_at(1, 0));
        s.feed(b"x-t: 1\r\n\r\n");
        assert!(s.ended_at(1, 0));
    }

    #[test]
    fn the_end_of_a_request_is_found_behind_pipelined_ones() {
        let one = b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n";
        let two = b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n";
        let partial = b"GET /3 HT";
        let all = [&one[..], two, partial].concat();
        let s = fed(&all);
        assert!(s.ended_at(1, two.len() + partial.len()));
        assert!(!s.ended_at(1, partial.len()));
        assert!(s.ended_at(2, partial.len()));
        assert!(!s.ended_at(3, 0), "the third request has not ended");
    }

    #[test]
    fn a_stopped_scan_ends_nothing() {
        let s = fed(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(!s.ended_at(1, 0));
    }
}
