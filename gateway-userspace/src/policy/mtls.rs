//! `type: mtls`: the client certificate the listener verified in the TLS
//! handshake, mapped to a consumer by its names (`consumer_by`, in order)
//! through the consumers' `mtls_subjects`, or their usernames. Verification
//! itself (CA, dates, key usage, revocation) is the listener's
//! (`tls.client_auth`); this policy only says who a valid certificate is.

use std::sync::Arc;

use http::{request::Parts, HeaderValue, StatusCode};

use super::{AuthError, AuthResult, Authenticator, Check, Consumer, Consumers, Identity};
use crate::{
    config::{self, CertificateName},
    proxy::ClientCertificate,
};

pub struct Mtls {
    consumer_by: Vec<CertificateName>,
    usernames: bool,
    consumers: Arc<Consumers>,
}

impl Mtls {
    pub fn new(config: &config::Mtls, consumers: Arc<Consumers>) -> Self {
        Self {
            consumer_by: config.consumer_by.clone(),
            usernames: config.username_from_certificate,
            consumers,
        }
    }

    fn fail(description: &'static str, presented: bool) -> AuthResult {
        Err(AuthError {
            status: StatusCode::UNAUTHORIZED,
            // RFC 8120's scheme name for TLS client authentication.
            challenge: HeaderValue::from_static("Mutual realm=\"xgate\""),
            description,
            presented,
        })
    }

    /// The consumer the certificate's first matching name is.
    fn consumer(&self, certificate: &ClientCertificate) -> Option<&Arc<Consumer>> {
        self.consumer_by
            .iter()
            .flat_map(|kind| certificate.names(*kind))
            .find_map(|name| {
                self.consumers.by_mtls_subject(name).or_else(|| {
                    self.usernames
                        .then(|| self.consumers.by_username(name))
                        .flatten()
                })
            })
    }

    fn check_now(&self, certificate: Option<&ClientCertificate>) -> AuthResult {
        let Some(certificate) = certificate else {
            return Self::fail("no client certificate", false);
        };
        let Some(consumer) = self.consumer(certificate) else {
            return Self::fail("unknown client certificate", true);
        };
        Ok(Identity {
            consumer: Some(consumer.clone()),
            credential: Some(certificate.fingerprint.clone()),
            anonymous: false,
        })
    }
}

impl Authenticator for Mtls {
    fn check<'a>(&'a self, parts: &'a mut Parts) -> Check<'a> {
        // The forwarding path puts the connection's certificate here.
        let certificate = parts.extensions.get::<Arc<ClientCertificate>>();
        Check::Now(self.check_now(certificate.map(|c| &**c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumers() -> Arc<Consumers> {
        let config = config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             consumers:\n\
             - {username: dns, mtls_subjects: [api.clients.test]}\n\
             - {username: uri, mtls_subjects: ['spiffe://xgate.test/svc']}\n\
             - {username: mail, mtls_subjects: [ops@example.test]}\n\
             - {username: cn, mtls_subjects: [Build Robot]}\n\
             - {username: robot}\n",
            "t",
        )
        .unwrap();
        Arc::new(Consumers::compile(&config.consumers).unwrap())
    }

    fn policy(by: &[CertificateName], usernames: bool) -> Mtls {
        Mtls::new(
            &config::Mtls {
                consumer_by: by.to_vec(),
                username_from_certificate: usernames,
                anonymous: None,
            },
            consumers(),
        )
    }

    fn who(policy: &Mtls, certificate: &ClientCertificate) -> Result<String, (&'static str, bool)> {
        policy
            .check_now(Some(certificate))
            .map(|identity| identity.consumer.unwrap().username.to_string())
            .map_err(|e| (e.description, e.presented))
    }

    use CertificateName::*;
    const ALL: &[CertificateName] = &[SanDns, SanUri, SanEmail, SubjectCn];

    #[test]
    fn each_kind_of_name_maps_to_its_consumer() {
        let all = policy(ALL, false);
        let cert = |dns, uri, email, cn| ClientCertificate::with_names(dns, uri, email, cn);
        assert_eq!(
            who(&all, &cert(&["api.clients.test"], &[], &[], &[])),
            Ok("dns".into())
        );
        assert_eq!(
            who(&all, &cert(&[], &["spiffe://xgate.test/svc"], &[], &[])),
            Ok("uri".into())
        );
        assert_eq!(
            who(&all, &cert(&[], &[], &["ops@example.test"], &[])),
            Ok("mail".into())
        );
        assert_eq!(
            who(&all, &cert(&[], &[], &[], &["Build Robot"])),
            Ok("cn".into())
        );
    }

    #[test]
    fn consumer_by_order_decides_and_unlisted_kinds_are_not_read() {
        let both = ClientCertificate::with_names(
            &["other.test", "api.clients.test"],
            &["spiffe://xgate.test/svc"],
            &[],
            &["Build Robot"],
        );
        assert_eq!(who(&policy(ALL, false), &both), Ok("dns".into()));
        assert_eq!(
            who(&policy(&[SubjectCn, SanDns], false), &both),
            Ok("cn".into())
        );
        assert_eq!(
            who(&policy(&[SanUri, SanDns], false), &both),
            Ok("uri".into())
        );
        // A name of a kind consumer_by leaves out is never looked up.
        let cn_only = ClientCertificate::with_names(&[], &[], &[], &["Build Robot"]);
        assert_eq!(
            who(&policy(&[SanDns, SanUri], false), &cn_only),
            Err(("unknown client certificate", true))
        );
    }

    #[test]
    fn usernames_only_when_asked_and_after_mtls_subjects() {
        let robot = ClientCertificate::with_names(&[], &[], &[], &["robot"]);
        assert_eq!(
            who(&policy(ALL, false), &robot),
            Err(("unknown client certificate", true))
        );
        assert_eq!(who(&policy(ALL, true), &robot), Ok("robot".into()));
        // A name that is both someone's subject and another's username
        // goes to the subject's owner.
        let config = config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             consumers: [{username: alice}, {username: bob, mtls_subjects: [alice]}]\n",
            "t",
        )
        .unwrap();
        let consumers = Arc::new(Consumers::compile(&config.consumers).unwrap());
        let p = Mtls::new(
            &config::Mtls {
                consumer_by: ALL.to_vec(),
                username_from_certificate: true,
                anonymous: None,
            },
            consumers,
        );
        let alice = ClientCertificate::with_names(&[], &[], &[], &["alice"]);
        assert_eq!(who(&p, &alice), Ok("bob".into()));
    }

    #[test]
    fn no_certificate_is_not_presented_and_the_credential_is_the_fingerprint() {
        let p = policy(ALL, false);
        let error = p.check_now(None).unwrap_err();
        assert_eq!(error.status, StatusCode::UNAUTHORIZED);
        assert_eq!(error.challenge, "Mutual realm=\"xgate\"");
        assert_eq!(
            (error.description, error.presented),
            ("no client certificate", false)
        );

        let cert = ClientCertificate::with_names(&["api.clients.test"], &[], &[], &[]);
        let identity = p.check_now(Some(&cert)).unwrap();
        assert_eq!(identity.credential, Some(cert.fingerprint.clone()));
        assert!(!identity.anonymous);
    }

    #[test]
    fn the_certificate_is_taken_from_the_request() {
        let p = policy(ALL, false);
        let (mut parts, ()) = http::Request::new(()).into_parts();
        let Check::Now(result) = p.check(&mut parts) else {
            panic!("mtls answers at once")
        };
        assert!(!result.unwrap_err().presented);
        parts
            .extensions
            .insert(Arc::new(ClientCertificate::with_names(
                &[],
                &[],
                &["ops@example.test"],
                &[],
            )));
        let Check::Now(result) = p.check(&mut parts) else {
            panic!("mtls answers at once")
        };
        assert_eq!(&*result.unwrap().consumer.unwrap().username, "mail");
    }
}
