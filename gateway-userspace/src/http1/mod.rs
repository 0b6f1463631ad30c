//! HTTP/1.1 on the wire, shared by both ends of the proxy: the server that
//! reads clients' requests (`proxy::http1`) and the client that speaks to
//! targets (`upstream::h1`).
//!
//! - `chunked`: the chunked transfer coding, decoded in place
//! - `wire`: the read buffer, the vectored write queue, and the numbers and
//!   fields of a message head

pub mod chunked;
pub mod wire;
