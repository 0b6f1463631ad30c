//! The client certificate a TLS handshake verified, read once per
//! connection into what its requests need: the `X-Client-Cert-*` headers
//! sent upstream, and the names the `mtls` policy maps to consumers.
//!
//! rustls-webpki, which verified the certificate, gives its DNS and URI
//! names but neither e-mail names nor the subject's attributes. Rather than
//! take a general X.509 parser (and its dozen crates) into the daemon for
//! two structures, this reads them with a small DER reader. It only ever
//! sees certificates that have already been verified: the chain ends at a
//! CA the operator configured, so only that CA could have shaped the bytes.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::CertificateName;

pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const X_CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
pub const X_CLIENT_CERT_FINGERPRINT: HeaderName =
    HeaderName::from_static("x-client-cert-fingerprint");

/// A verified client certificate, as the requests of its connection see it.
#[derive(Debug)]
pub struct ClientCertificate {
    /// `X-Client-Cert-Subject`: the subject as an RFC 4514 string
    /// (`CN=client,O=Example`), non-ASCII escaped; `None` for an empty
    /// subject.
    pub subject: Option<HeaderValue>,
    /// `X-Client-Cert-SAN`: `DNS:a.example,URI:spiffe://x,email:a@b,IP:..`
    /// in the certificate's order; `None` without names.
    pub san: Option<HeaderValue>,
    /// `X-Client-Cert-Fingerprint`: SHA-256 of the certificate (DER), lower
    /// case hex.
    pub fingerprint: HeaderValue,
    /// DNS names, lower case.
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    /// The subject's common names, most specific first (the RFC 4514 order).
    pub common_names: Vec<String>,
}

/// A verified certificate whose subject or names this reader does not
/// understand.
#[derive(Debug, thiserror::Error)]
#[error("client certificate cannot be read: {0}")]
pub struct Unreadable(&'static str);

impl ClientCertificate {
    /// Reads the certificate the handshake verified (DER).
    pub fn parse(der: &[u8]) -> Result<Self, Unreadable> {
        let parts = der::certificate(der)?;
        let mut cert = Self {
            subject: None,
            san: None,
            fingerprint: HeaderValue::from_str(&hex(&crate::policy::consumers::sha256(der)))
                .expect("hex is a header value"),
            dns: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            common_names: Vec::new(),
        };

        let rdns = der::name(parts.subject)?;
        let mut subject = String::new();
        for rdn in rdns.iter().rev() {
            if !subject.is_empty() {
                subject.push(',');
            }
            for (i, (oid, value)) in rdn.iter().enumerate() {
                if i > 0 {
                    subject.push('+');
                }
                format_attribute(oid, value, &mut subject)?;
                if *oid == der::OID_COMMON_NAME {
                    if let Some(text) = der::text(value) {
                        cert.common_names.push(text);
                    }
                }
            }
        }
        cert.subject = (!subject.is_empty())
            .then(|| HeaderValue::from_str(&subject).ok())
            .flatten();

        let mut san = String::new();
        for name in der::general_names(parts.subject_alt_name)? {
            let (kind, text) = match name {
                der::GeneralName::Dns(bytes) => ("DNS", utf8(bytes)),
                der::GeneralName::Uri(bytes) => ("URI", utf8(bytes)),
                der::GeneralName::Email(bytes) => ("email", utf8(bytes)),
                der::GeneralName::Ip(ip) => ("IP", Some(ip.to_string())),
            };
            let Some(text) = text else { continue };
            if !san.is_empty() {
                san.push(',');
            }
            san.push_str(kind);
            san.push(':');
            header_safe(&text, &mut san);
            match name {
                der::GeneralName::Dns(_) => cert.dns.push(text.to_ascii_lowercase()),
                der::GeneralName::Uri(_) => cert.uris.push(text),
                der::GeneralName::Email(_) => cert.emails.push(text),
                der::GeneralName::Ip(_) => {}
            }
        }
        cert.san = (!san.is_empty())
            .then(|| HeaderValue::from_str(&san).ok())
            .flatten();
        Ok(cert)
    }

    /// The certificate's names of one kind, in the order they are tried.
    pub fn names(&self, kind: CertificateName) -> &[String] {
        match kind {
            CertificateName::SanDns => &self.dns,
            CertificateName::SanUri => &self.uris,
            CertificateName::SanEmail => &self.emails,
            CertificateName::SubjectCn => &self.common_names,
        }
    }

    /// Sets the `X-Client-Cert-*` headers (the client's own copies are
    /// gone by now).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(subject) = &self.subject {
            headers.insert(X_CLIENT_CERT_SUBJECT, subject.clone());
        }
        if let Some(san) = &self.san {
            headers.insert(X_CLIENT_CERT_SAN, san.clone());
        }
        headers.insert(X_CLIENT_CERT_FINGERPRINT, self.fingerprint.clone());
    }
}

fn utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A SAN entry in the header list: bytes that would break the list or the
/// header (comma, space, controls, non-ASCII) percent-encoded.
fn header_safe(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b',' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Short names of attribute types: RFC 4514's, and the two that OpenSSL
/// (and so nginx's `$ssl_client_s_dn`) also writes by name.
const ATTRIBUTE_NAMES: &[(&[u8], &str)] = &[
    (der::OID_COMMON_NAME, "CN"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "UID",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

/// One `type=value` of RFC 4514: a known type by name with its value as
/// escaped text; any other type as its dotted OID with the value's DER in
/// hex (`2.5.4.42=#0c03426f62`), as the RFC asks.
fn format_attribute(oid: &[u8], value: &der::Tlv<'_>, out: &mut String) -> Result<(), Unreadable> {
    let name = ATTRIBUTE_NAMES.iter().find(|(o, _)| *o == oid);
    match name {
        Some((_, name)) => out.push_str(name),
        None => out.push_str(&der::dotted(oid).ok_or(Unreadable("attribute type"))?),
    }
    out.push('=');
    match name.and(der::text(value)) {
        Some(text) => escape(&text, out),
        None => {
            out.push('#');
            out.push_str(&hex(value.raw));
        }
    }
    Ok(())
}

/// RFC 4514 §2.4 escaping, and every byte outside printable ASCII as a
/// `\XX` pair (which the RFC allows for any character), so the result is a
/// valid header value.
fn escape(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            ' '..='~' => out.push(c),
            _ => {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
        }
    }
}

/// The few DER structures of a certificate that are read here. Every read
/// is bounds-checked; nothing recurses.
mod der {
    use std::{fmt::Write as _, net::IpAddr};

    use super::Unreadable;

    const BOOLEAN: u8 = 0x01;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    /// `[0]` version and `[3]` extensions of a TBSCertificate.
    const VERSION: u8 = 0xa0;
    const EXTENSIONS: u8 = 0xa3;
    /// subjectAltName, 2.5.29.17.
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// commonName, 2.5.4.3.
    pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    const MALFORMED: Unreadable = Unreadable("malformed DER");

    /// One element: its tag, its contents, and all of its bytes.
    #[derive(Debug, Clone, Copy)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub value: &'a [u8],
        pub raw: &'a [u8],
    }

    /// Elements one after the other.
    pub struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Self(bytes)
        }

        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        pub fn next(&mut self) -> Result<Tlv<'a>, Unreadable> {
            let bytes = self.0;
            let (&tag, rest) = bytes.split_first().ok_or(MALFORMED)?;
            // High tag numbers are in nothing read here.
            if tag & 0x1f == 0x1f {
                return Err(MALFORMED);
            }
            let (&first, rest) = rest.split_first().ok_or(MALFORMED)?;
            let (len, rest) = if first < 0x80 {
                (usize::from(first), rest)
            } else {
                // Long form; 0x80 (indefinite) is not DER, and no
                // certificate needs more than four length bytes.
                let n = usize::from(first & 0x7f);
                if !(1..=4).contains(&n) {
                    return Err(MALFORMED);
                }
                let len_bytes = rest.get(..n).ok_or(MALFORMED)?;
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, rest.get(n..).ok_or(MALFORMED)?)
            };
            let value = rest.get(..len).ok_or(MALFORMED)?;
            let header = bytes.len() - rest.len();
            self.0 = rest.get(len..).ok_or(MALFORMED)?;
            Ok(Tlv {
                tag,
                value,
                raw: bytes.get(..header + len).ok_or(MALFORMED)?,
            })
        }

        /// The next element's contents, which must have `tag`.
        pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], Unreadable> {
            match self.next()? {
                tlv if tlv.tag == tag => Ok(tlv.value),
                _ => Err(MALFORMED),
            }
        }
    }

    /// What is read from a certificate.
    pub struct Certificate<'a> {
        /// The subject Name's contents (its RDNs).
        pub subject: &'a [u8],
        /// The subjectAltName extension's value (a GeneralNames), if any.
        pub subject_alt_name: Option<&'a [u8]>,
    }

    /// RFC 5280 §4.1: Certificate → TBSCertificate → subject, extensions.
    pub fn certificate(der: &[u8]) -> Result<Certificate<'_>, Unreadable> {
        let certificate = Reader::new(der).expect(SEQUENCE)?;
        let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
        let mut field = tbs.next()?;
        if field.tag == VERSION {
            field = tbs.next()?;
        }
        if field.tag != INTEGER {
            return Err(MALFORMED);
        }
        tbs.expect(SEQUENCE)?; // signature
        tbs.expect(SEQUENCE)?; // issuer
        tbs.expect(SEQUENCE)?; // validity
        let subject = tbs.expect(SEQUENCE)?;
        tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
        let mut subject_alt_name = None;
        // issuerUniqueID [1], subjectUniqueID [2], extensions [3].
        while !tbs.is_empty() {
            let field = tbs.next()?;
            if field.tag != EXTENSIONS {
                continue;
            }
            let mut extensions = Reader::new(Reader::new(field.value).expect(SEQUENCE)?);
            while !extensions.is_empty() {
                let mut extension = Reader::new(extensions.expect(SEQUENCE)?);
                let oid = extension.expect(OID)?;
                let mut value = extension.next()?;
                if value.tag == BOOLEAN {
                    value = extension.next()?; // critical
                }
                if value.tag != OCTET_STRING {
                    return Err(MALFORMED);
                }
                if oid == OID_SUBJECT_ALT_NAME {
                    subject_alt_name = Some(value.value);
                }
            }
        }
        Ok(Certificate {
            subject,
            subject_alt_name,
        })
    }

    /// A Name's RDNs, in encoding order (least specific first), each a list
    /// of (attribute type OID, value).
    #[allow(clippy::type_complexity)]
    pub fn name(contents: &[u8]) -> Result<Vec<Vec<(&[u8], Tlv<'_>)>>, Unreadable> {
        let mut rdns = Vec::new();
        let mut reader = Reader::new(contents);
        while !reader.is_empty() {
            let mut set = Reader::new(reader.expect(SET)?);
            let mut rdn = Vec::new();
            while !set.is_empty() {
                let mut attribute = Reader::new(set.expect(SEQUENCE)?);
                let oid = attribute.expect(OID)?;
                rdn.push((oid, attribute.next()?));
            }
            rdns.push(rdn);
        }
        Ok(rdns)
    }

    /// A subjectAltName entry of a kind that is read.
    pub enum GeneralName<'a> {
        Email(&'a [u8]),
        Dns(&'a [u8]),
        Uri(&'a [u8]),
        Ip(IpAddr),
    }

    /// The entries of a GeneralNames (other kinds skipped).
    pub fn general_names(value: Option<&[u8]>) -> Result<Vec<GeneralName<'_>>, Unreadable> {
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        let mut reader = Reader::new(Reader::new(value).expect(SEQUENCE)?);
        let mut names = Vec::new();
        while !reader.is_empty() {
            let tlv = reader.next()?;
            // Context-specific primitive tags of RFC 5280's GeneralName.
            names.push(match tlv.tag {
                0x81 => GeneralName::Email(tlv.value),
                0x82 => GeneralName::Dns(tlv.value),
                0x86 => GeneralName::Uri(tlv.value),
                0x87 => match tlv.value.len() {
                    4 => GeneralName::Ip(IpAddr::from(
                        <[u8; 4]>::try_from(tlv.value).expect("4 bytes"),
                    )),
                    16 => GeneralName::Ip(IpAddr::from(
                        <[u8; 16]>::try_from(tlv.value).expect("16 bytes"),
                    )),
                    _ => continue,
                },
                _ => continue,
            });
        }
        Ok(names)
    }

    /// A directory string as text: UTF8String, the ASCII types,
    /// TeletexString (taken as Latin-1, as every decoder in use does),
    /// BMPString (UTF-16) and UniversalString (UTF-32). `None` for others.
    pub fn text(value: &Tlv<'_>) -> Option<String> {
        let bytes = value.value;
        match value.tag {
            0x0c => std::str::from_utf8(bytes).ok().map(str::to_owned),
            // Numeric, Printable, IA5, Visible.
            0x12 | 0x13 | 0x16 | 0x1a => bytes
                .is_ascii()
                .then(|| bytes.iter().copied().map(char::from).collect()),
            0x14 => Some(bytes.iter().copied().map(char::from).collect()),
            0x1e if bytes.len().is_multiple_of(2) => char::decode_utf16(
                bytes
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
            )
            .collect::<Result<String, _>>()
            .ok(),
            0x1c if bytes.len().is_multiple_of(4) => bytes
                .chunks_exact(4)
                .map(|quad| {
                    char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))
                })
                .collect(),
            _ => None,
        }
    }

    /// An OID's contents as dotted decimal.
    pub fn dotted(oid: &[u8]) -> Option<String> {
        let mut arcs: Vec<u64> = Vec::new();
        let mut arc: u64 = 0;
        for (i, b) in oid.iter().enumerate() {
            if arc > u64::MAX >> 7 {
                return None;
            }
            arc = (arc << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                arcs.push(arc);
                arc = 0;
            } else if i + 1 == oid.len() {
                return None;
            }
        }
        let first = *arcs.first()?;
        let (a, b) = match first {
            0..=39 => (0, first),
            40..=79 => (1, first - 40),
            _ => (2, first - 80),
        };
        let mut out = format!("{a}.{b}");
        for arc in &arcs[1..] {
            let _ = write!(out, ".{arc}");
        }
        Some(out)
    }
}

/// For the tests of policies: a certificate with just these names.
#[cfg(test)]
impl ClientCertificate {
    pub fn with_names(dns: &[&str], uris: &[&str], emails: &[&str], cns: &[&str]) -> Self {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Self {
            subject: None,
            san: None,
            fingerprint: HeaderValue::from_static("ab12"),
            dns: owned(dns),
            uris: owned(uris),
            emails: owned(emails),
            common_names: owned(cns),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        string::{BmpString, Ia5String},
        CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, OtherNameValue, SanType,
    };

    use super::*;

    fn ia5(text: &str) -> Ia5String {
        Ia5String::try_from(text).unwrap()
    }

    /// A self-signed certificate (the reader never verifies: the handshake
    /// has).
    fn certificate(subject: &[(DnType, DnValue)], sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), value.clone());
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn full() -> Vec<u8> {
        certificate(
            &[
                (
                    DnType::CountryName,
                    DnValue::PrintableString("NL".try_into().unwrap()),
                ),
                (DnType::OrganizationName, "Example, Inc.".into()),
                (
                    DnType::LocalityName,
                    DnValue::BmpString(BmpString::try_from("Zürich").unwrap()),
                ),
                (DnType::CustomDnType(vec![2, 5, 4, 42]), "Bob".into()),
                (DnType::CommonName, " #client+1 ".into()),
            ],
            vec![
                SanType::DnsName(ia5("API.Clients.test")),
                SanType::URI(ia5("spiffe://xgate.test/a,b")),
                SanType::OtherName((
                    vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                    OtherNameValue::Utf8String("upn@example.test".into()),
                )),
                SanType::Rfc822Name(ia5("ops@example.test")),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                SanType::IpAddress("::1".parse().unwrap()),
            ],
        )
    }

    #[test]
    fn subject_names_and_fingerprint() {
        let der = full();
        let cert = ClientCertificate::parse(&der).unwrap();
        // RFC 4514: most specific first; special characters escaped; a
        // type without a short name as its OID with the DER value.
        // ('#' is escaped only where it would start the value.)
        assert_eq!(
            cert.subject.as_ref().unwrap().to_str().unwrap(),
            r"CN=\ #client\+1\ ,2.5.4.42=#0c03426f62,L=Z\c3\bcrich,O=Example\, Inc.,C=NL"
        );
        assert_eq!(
            cert.san.as_ref().unwrap().to_str().unwrap(),
            "DNS:API.Clients.test,URI:spiffe://xgate.test/a%2Cb,email:ops@example.test,\
             IP:10.0.0.1,IP:::1"
        );
        assert_eq!(cert.dns, ["api.clients.test"]);
        assert_eq!(cert.uris, ["spiffe://xgate.test/a,b"]);
        assert_eq!(cert.emails, ["ops@example.test"]);
        assert_eq!(cert.common_names, [" #client+1 "]);
        assert_eq!(
            cert.fingerprint.to_str().unwrap(),
            hex(&crate::policy::consumers::sha256(&der))
        );
        assert_eq!(cert.fingerprint.len(), 64);

        let mut headers = HeaderMap::new();
        cert.apply(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[X_CLIENT_CERT_FINGERPRINT], cert.fingerprint);
    }

    #[test]
    fn a_certificate_without_subject_or_names_gets_only_its_fingerprint() {
        let cert = ClientCertificate::parse(&certificate(&[], Vec::new())).unwrap();
        assert!(cert.subject.is_none() && cert.san.is_none());
        assert!(cert.names(CertificateName::SubjectCn).is_empty());
        let mut headers = HeaderMap::new();
        cert.apply(&mut headers);
        assert_eq!(
            headers.keys().collect::<Vec<_>>(),
            [&X_CLIENT_CERT_FINGERPRINT]
        );
    }

    #[test]
    fn names_by_kind() {
        let cert = ClientCertificate::parse(&full()).unwrap();
        assert_eq!(cert.names(CertificateName::SanDns), ["api.clients.test"]);
        assert_eq!(
            cert.names(CertificateName::SanUri),
            ["spiffe://xgate.test/a,b"]
        );
        assert_eq!(cert.names(CertificateName::SanEmail), ["ops@example.test"]);
        assert_eq!(cert.names(CertificateName::SubjectCn), [" #client+1 "]);
    }

    /// Bytes the reader was never meant to see end in an error, never a
    /// panic: every truncation and every single-byte change of a real
    /// certificate.
    #[test]
    fn damaged_certificates_are_refused_without_panicking() {
        let der = full();
        for len in 0..der.len() {
            assert!(
                ClientCertificate::parse(&der[..len]).is_err(),
                "prefix {len}"
            );
        }
        for i in 0..der.len() {
            for byte in [0x00, 0x1f, 0x7f, 0x80, 0x84, 0xff, der[i] ^ 0x01] {
                let mut damaged = der.clone();
                damaged[i] = byte;
                let _ = ClientCertificate::parse(&damaged);
            }
        }
    }

    #[test]
    fn oids_in_dotted_decimal() {
        assert_eq!(der::dotted(&[0x55, 0x04, 0x2a]).unwrap(), "2.5.4.42");
        assert_eq!(
            der::dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]).unwrap(),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(der::dotted(&[0x88, 0x37]).unwrap(), "2.999");
        assert_eq!(der::dotted(&[]), None);
        assert_eq!(der::dotted(&[0x2a, 0x86]), None, "unfinished arc");
        assert_eq!(der::dotted(&[0xff; 12]), None, "arc beyond 64 bits");
    }

    #[test]
    fn rfc4514_escaping() {
        let escaped = |text: &str| {
            let mut out = String::new();
            escape(text, &mut out);
            out
        };
        assert_eq!(escaped("a\"b;c<d>e\\f"), "a\\\"b\\;c\\<d\\>e\\\\f");
        assert_eq!(escaped("#a#"), "\\#a#");
        assert_eq!(escaped(" a b "), "\\ a b\\ ");
        assert_eq!(escaped("é\n"), "\\c3\\a9\\0a");
        assert_eq!(escaped(""), "");
    }
}
