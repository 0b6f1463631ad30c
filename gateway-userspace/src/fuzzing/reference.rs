//! A second HTTP/1.1 request parser, written from RFC 9112 alone and as
//! strict as it: the reference the differential target holds xgate's
//! server to. It shares no code with xgate's parser (not httparse, not the
//! chunked decoder), and is written for plainness, not speed.

/// A request head as the RFC reads it.
#[derive(Debug)]
pub struct Head {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    /// The minor version: `HTTP/1.0` or `HTTP/1.1`.
    pub minor: u8,
    /// Names in lowercase, values without surrounding whitespace, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub framing: Framing,
    /// Bytes the head took, its blank line included.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Why the reference refuses a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// `Ok(None)`: the head is not all there.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Refused> {
    let mut lines = Lines { buf, at: 0 };
    // RFC 9112 §2.2: empty lines before the request line may be ignored.
    let request_line = loop {
        match lines.next()? {
            None => return Ok(None),
            Some([]) => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused("request line is not three parts"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Refused("method"));
    }
    // Visible ASCII; and bytes over 0x7F, which RFC 9112 leaves out of a
    // target but which cannot move a message boundary (the one leniency
    // the reference shares with xgate).
    if target.is_empty()
        || !target
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err(Refused("request target"));
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err(Refused("version")),
    };
    let mut fields = Vec::new();
    loop {
        let Some(line) = lines.next()? else {
            return Ok(None);
        };
        if line.is_empty() {
            break;
        }
        fields.push(field_line(line)?);
    }
    let framing = framing(&fields, minor)?;
    Ok(Some(Head {
        method: method.to_vec(),
        target: target.to_vec(),
        minor,
        fields,
        framing,
        len: lines.at,
    }))
}

/// `field-name ":" OWS field-value OWS` (RFC 9112 §5).
fn field_line(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Refused> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(Refused("field line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Refused("field name"));
    }
    let value = trim_ows(value);
    // field-vchar = VCHAR / obs-text, with SP and HTAB between them.
    if !value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err(Refused("field value"));
    }
    Ok((name.to_ascii_lowercase(), value.to_vec()))
}

/// RFC 9112 §6.3 for requests, refusing every case a recipient could read
/// two ways (§6.1, §6.3 items 3-5; more than one Host, RFC 9112 §3.2).
fn framing(fields: &[(Vec<u8>, Vec<u8>)], minor: u8) -> Result<Framing, Refused> {
    let all = |name: &[u8]| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .collect()
    };
    if all(b"host").len() > 1 {
        return Err(Refused("more than one Host"));
    }
    let lengths = all(b"content-length");
    let codings: Vec<&[u8]> = all(b"transfer-encoding")
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|c| !c.is_empty())
        .collect();
    let has_te = fields.iter().any(|(n, _)| n == b"transfer-encoding");
    if has_te {
        if !lengths.is_empty() {
            return Err(Refused("Content-Length with Transfer-Encoding"));
        }
        if minor == 0 {
            return Err(Refused("Transfer-Encoding in HTTP/1.0"));
        }
        return match &codings[..] {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(Refused("a transfer coding other than chunked alone")),
        };
    }
    match &lengths[..] {
        [] => Ok(Framing::None),
        [digits] => {
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(Refused("Content-Length"));
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or(Refused("Content-Length"))?;
            Ok(if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            })
        }
        _ => Err(Refused("more than one Content-Length")),
    }
}

/// A chunked body (RFC 9112 §7.1): the data, the trailer fields, and the
/// bytes it took. `Ok(None)`: not all there.
pub type Body = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, usize);

pub fn parse_chunked(buf: &[u8]) -> Result<Option<Body>, Refused> {
    let mut lines = Lines { buf, at: 0 };
    let mut data = Vec::new();
    loop {
        let Some(line) = lines.next()? else {
            return Ok(None);
        };
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(Refused("chunk size"));
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
            .map_err(|_| Refused("chunk size"))?;
        chunk_extensions(&line[digits..])?;
        if size == 0 {
            break;
        }
        let start = lines.at;
        let Some(end) = usize::try_from(size)
            .ok()
            .and_then(|size| start.checked_add(size))
        else {
            return Err(Refused("chunk size"));
        };
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(Refused("chunk data not followed by CRLF"));
        }
        data.extend_from_slice(&buf[start..end]);
        lines.at = end + 2;
    }
    let mut trailers = Vec::new();
    loop {
        let Some(line) = lines.next()? else {
            return Ok(None);
        };
        if line.is_empty() {
            return Ok(Some((data, trailers, lines.at)));
        }
        trailers.push(field_line(line)?);
    }
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`: tokens, quoted
/// strings, and the separators; no control characters but HTAB.
fn chunk_extensions(rest: &[u8]) -> Result<(), Refused> {
    let rest = trim_ows(rest);
    if rest.is_empty() {
        return Ok(());
    }
    if rest[0] != b';' {
        return Err(Refused("chunk size"));
    }
    if rest
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
    {
        Ok(())
    } else {
        Err(Refused("chunk extension"))
    }
}

/// Lines ended by CRLF, and nothing else: a bare CR or LF is an error.
struct Lines<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Result<Option<&'a [u8]>, Refused> {
        let rest = &self.buf[self.at..];
        for (i, &b) in rest.iter().enumerate() {
            match b {
                b'\r' => {
                    return match rest.get(i + 1) {
                        None => Ok(None),
                        Some(b'\n') => {
                            self.at += i + 2;
                            Ok(Some(&rest[..i]))
                        }
                        Some(_) => Err(Refused("bare CR")),
                    }
                }
                b'\n' => return Err(Refused("bare LF")),
                0 => return Err(Refused("NUL")),
                _ => {}
            }
        }
        Ok(None)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else { return &[] };
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').unwrap();
    &s[start..=end]
}
