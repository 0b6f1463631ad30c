//! A corpus of malformed and ambiguous HTTP/1.1 requests, sent over raw
//! sockets: request smuggling shapes (two lengths, a length and a coding,
//! codings that do not end in chunked, chunk sizes two parsers could read
//! two ways), bare CR, LF and NUL, obsolete line folding, odd targets and
//! versions, oversized lines, HTTP/1.0 keep-alive and requests pipelined
//! behind an error. Each gets the answers its row expects and then a
//! close, and a recording upstream with its own strict parser
//! (`xgate_tests::recording`) shows that only whole, unambiguous requests
//! ever reached it: as many as the row says.
//!
//! Adding a case is one row in [`CORPUS`].

use std::net::SocketAddr;

use xgate_tests::{
    http::{exchange_raw, parse_all},
    ports::free_port,
    process::Daemon,
    recording::RecordingUpstream,
};

/// One hostile request (or several on one connection).
struct Case {
    name: &'static str,
    /// What the client sends, at once, on one connection.
    request: &'static [u8],
    /// The statuses it gets back, in order, before the gateway closes the
    /// connection (none: closed without an answer).
    answers: &'static [u16],
    /// Whole requests the upstream gets from it.
    forwarded: usize,
}

const fn case(
    name: &'static str,
    request: &'static [u8],
    answers: &'static [u16],
    forwarded: usize,
) -> Case {
    Case {
        name,
        request,
        answers,
        forwarded,
    }
}

#[rustfmt::skip]
static CORPUS: &[Case] = &[
    // A baseline: the corpus's route and upstream work.
    case("plain GET", b"GET /ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[200], 1),
    case("chunked POST", b"POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", &[200], 1),
    // Framing: two parsers must never disagree on where a body ends.
    case("CL.TE", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", &[400], 0),
    case("TE.CL", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", &[400], 0),
    case("CL.TE, coding in a second field", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], 0),
    case("duplicate Content-Length, same value", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", &[400], 0),
    case("duplicate Content-Length, different values", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello", &[400], 0),
    case("Content-Length as a list", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello", &[400], 0),
    case("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nhello", &[400], 0),
    case("Content-Length negative", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n", &[400], 0),
    case("Content-Length in hex", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 0x5\r\n\r\nhello", &[400], 0),
    case("Content-Length overflowing u64", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 18446744073709551621\r\n\r\nhello", &[400], 0),
    case("Content-Length with a space inside", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1 0\r\n\r\nhello", &[400], 0),
    case("Transfer-Encoding: chunked, identity", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", &[400], 0),
    case("Transfer-Encoding: identity, chunked", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", &[501], 0),
    case("Transfer-Encoding: chunked twice", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], 0),
    case("Transfer-Encoding: xchunked", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", &[400], 0),
    case("Transfer-Encoding: chunked in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], 0),
    case("Transfer-Encoding with a NUL", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\0\r\n\r\n0\r\n\r\n", &[400], 0),
    case("Transfer-Encoding folded onto a second line", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", &[400], 0),
    // Chunk sizes: plain hex only.
    case("chunk size with a plus sign", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size with a minus sign", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size with 0x", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size overflowing u64", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size after whitespace", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size with whitespace inside", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size with a bare CR", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk size ended by a bare LF", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk extension ended by a bare LF", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk extension with a bare CR", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk extension with a NUL", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;a\0\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("chunk extension, well-formed", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", &[200], 1),
    case("chunk longer than its size", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", &[400], 0),
    case("last chunk with a bare LF", b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\r\n", &[400], 0),
    // Field syntax.
    case("obs-fold", b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\r\n c\r\n\r\n", &[400], 0),
    case("obs-fold before the first field", b"GET / HTTP/1.1\r\n Host: gw\r\n\r\n", &[400], 0),
    case("NUL in a field name", b"GET / HTTP/1.1\r\nHost: gw\r\nX-\0A: b\r\n\r\n", &[400], 0),
    case("NUL in a field value", b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\0c\r\n\r\n", &[400], 0),
    case("bare CR in a field value", b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\rc\r\n\r\n", &[400], 0),
    case("bare CR in a field name", b"GET / HTTP/1.1\r\nHost: gw\r\nX\rA: b\r\n\r\n", &[400], 0),
    case("bare LF in a field name", b"GET / HTTP/1.1\r\nHost: gw\r\nX\nA: b\r\n\r\n", &[400], 0),
    case("fields ended by bare LFs", b"GET / HTTP/1.1\nHost: gw\nX-A: b\n\n", &[400], 0),
    case("space before the colon", b"GET / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", &[400], 0),
    case("field without a colon", b"GET / HTTP/1.1\r\nHost: gw\r\nX-A b\r\n\r\n", &[400], 0),
    case("two Host fields", b"GET / HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n", &[400], 0),
    // Refused, but the framing is clear: the connection could go on.
    case("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\nX-A: b\r\nConnection: close\r\n\r\n", &[400], 0),
    // Request lines and targets.
    case("absolute-form target", b"GET http://gw/abs HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n", &[200], 1),
    case("absolute-form with another scheme", b"GET ftp://gw/abs HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[400], 0),
    // Valid (RFC 9112 §3.2.4), about the server itself: no route serves it.
    case("asterisk-form OPTIONS", b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[404], 0),
    case("asterisk-form GET", b"GET * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[400], 0),
    case("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: gw\r\n\r\n", &[400], 0),
    case("tab in the request line", b"GET\t/ HTTP/1.1\r\nHost: gw\r\n\r\n", &[400], 0),
    case("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: gw\r\n\r\n", &[400], 0),
    case("HTTP/2.0 in HTTP/1 syntax", b"GET / HTTP/2.0\r\nHost: gw\r\n\r\n", &[400], 0),
    case("lower-case version", b"GET / http/1.1\r\nHost: gw\r\n\r\n", &[400], 0),
    case("HTTP/0.9 request line", b"GET /\r\n\r\n", &[400], 0),
    case("bare LF after the request line", b"GET / HTTP/1.1\nHost: gw\r\n\r\n", &[400], 0),
    case("NUL in the target", b"GET /a\0b HTTP/1.1\r\nHost: gw\r\n\r\n", &[400], 0),
    // Sizes.
    case("oversized request line", &OVERSIZED_TARGET, &[414], 0),
    case("oversized field line", &OVERSIZED_FIELD, &[431], 0),
    // Connections.
    case("HTTP/1.0 keep-alive", b"GET /a HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: gw\r\n\r\n", &[200, 200], 2),
    case("HTTP/1.0 closes without keep-alive", b"GET /a HTTP/1.0\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\n\r\n", &[200], 1),
    case("a body then a pipelined request", b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[200, 200], 2),
    case("pipelined after a framing error", b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nPOST /b HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[200, 400], 1),
    case("pipelined after a head error", b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\nX-A: b\r\n c\r\n\r\nGET /c HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[200, 400], 1),
    case("pipelined after a body error", b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0x0\r\n\r\nGET /c HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", &[400], 0),
];

/// A request line of 20 000 bytes: within the default limit on a head
/// (64 KiB), over the one on a target (8 KiB).
static OVERSIZED_TARGET: [u8; 20_000] = padded(
    b'a',
    b"GET /",
    b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
);

/// One field line of 70 000 bytes, over the limit on a head.
static OVERSIZED_FIELD: [u8; 70_000] =
    padded(b'b', b"GET / HTTP/1.1\r\nHost: gw\r\nX-Big: ", b"\r\n\r\n");

/// `prefix`, then `fill` up to `suffix`, which ends the N bytes.
const fn padded<const N: usize>(fill: u8, prefix: &[u8], suffix: &[u8]) -> [u8; N] {
    let mut out = [fill; N];
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    let mut j = 0;
    while j < suffix.len() {
        out[N - suffix.len() + j] = suffix[j];
        j += 1;
    }
    out
}

fn config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         upstreams: {{rec: {{targets: ['{upstream}']}}}}\n\
         routes: [{{name: all, match: {{path_prefix: /}}, upstream: rec}}]\n"
    )
}

#[tokio::test]
async fn hostile_requests_get_their_answer_and_nothing_ambiguous_reaches_the_upstream() {
    let upstream = RecordingUpstream::start().await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(listen, upstream.addr), None);
    let mut failures = Vec::new();
    for case in CORPUS {
        let before = upstream.requests().len();
        let outcome = match exchange_raw(listen, case.request).await {
            Err(e) => Err(format!("no close: {e}")),
            Ok(raw) => parse_all(&raw)
                .map(|rs| rs.iter().map(|r| r.status).collect::<Vec<_>>())
                .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(&raw))),
        };
        // The gateway answers once the upstream has answered; the count is
        // final by then.
        let forwarded = upstream.requests().len() - before;
        match outcome {
            Ok(answers) if answers == case.answers && forwarded == case.forwarded => {}
            Ok(answers) => failures.push(format!(
                "{}: answers {answers:?}, forwarded {forwarded}; expected {:?}, {}",
                case.name, case.answers, case.forwarded
            )),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    let violations = upstream.violations();
    assert!(
        failures.is_empty() && violations.is_empty(),
        "{} of {} cases failed:\n{}\n\nthe upstream could not read one way only:\n{}\n\nlog:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n"),
        violations.join("\n"),
        daemon.log()
    );
    // What did get through is what the clients meant: the absolute-form
    // target's authority became the Host, the pipelined requests kept their
    // own paths and bodies.
    let requests = upstream.requests();
    let abs = requests
        .iter()
        .find(|r| r.target == "/abs")
        .expect("the absolute-form request");
    assert_eq!(abs.header("host"), Some("gw"));
    let bodies: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|r| (r.target.as_str(), r.body.as_slice()))
        .collect();
    assert!(bodies.contains(&("/a", b"hello")), "{bodies:?}");
    assert!(!bodies.iter().any(|(t, _)| *t == "/c"), "{bodies:?}");
}
