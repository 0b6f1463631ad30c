use http::StatusCode;

use super::*;

/// A policy that answers what it was built with.
struct Fixed(Result<&'static str, bool>, Arc<Consumers>);

impl Authenticator for Fixed {
    fn check<'a>(&'a self, _parts: &'a mut Parts) -> Check<'a> {
        Check::Now(match self.0 {
            Ok(name) => Ok(Identity {
                consumer: self.1.by_username(name).cloned(),
                credential: None,
                anonymous: false,
            }),
            Err(presented) => Err(AuthError {
                status: StatusCode::UNAUTHORIZED,
                challenge: HeaderValue::from_static(if presented {
                    "Presented"
                } else {
                    "Missing"
                }),
                description: "no",
                presented,
            }),
        })
    }
}

fn consumers() -> Arc<Consumers> {
    let config = config::Config::from_yaml(
        "listeners: [{address: '127.0.0.1:1'}]\n\
         consumers: [{username: alice}, {username: bob}, {username: guest}]\n",
        "t",
    )
    .unwrap();
    Arc::new(Consumers::compile(&config.consumers).unwrap())
}

fn chain(mode: AuthMode, steps: Vec<(Result<&'static str, bool>, Option<&str>)>) -> Chain {
    let consumers = consumers();
    let list = PolicyList {
        mode,
        steps: steps
            .into_iter()
            .map(|(answer, anonymous)| {
                Step::new(
                    "fixed",
                    Phase::Authentication,
                    StepPolicy::Authenticator {
                        policy: Box::new(Fixed(answer, consumers.clone())),
                        anonymous: anonymous.map(|a| consumers.by_username(a).unwrap().clone()),
                    },
                )
            })
            .collect(),
        body_limit: None,
    };
    Chain::new("r", Arc::new(list), &Metrics::default())
}

fn conn() -> crate::exchange::ConnInfo {
    let addr: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    crate::exchange::ConnInfo::new(addr, addr, "http", None)
}

/// What a chain run leaves behind besides its answer.
#[derive(Default)]
struct Outcome {
    verdicts: Vec<&'static str>,
    response_headers: http::HeaderMap,
    signals: Recorded,
}

#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<Signal>>);

impl Signals for Recorded {
    fn record(&self, _client: IpAddr, signal: Signal) {
        self.0.lock().unwrap().push(signal);
    }
}

async fn run_with(
    chain: &Chain,
    parts: &mut Parts,
    outcome: &mut Outcome,
) -> Result<Option<Identity>, Rejection> {
    let conn = conn();
    let input = ChainInput {
        client_ip: conn.client.ip(),
        conn: &conn,
        verdicts: &mut outcome.verdicts,
        response_headers: &mut outcome.response_headers,
        signals: Some(&outcome.signals),
    };
    chain.run(parts, input).await
}

async fn run(chain: &Chain) -> Result<Option<String>, String> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    match run_with(chain, &mut parts, &mut Outcome::default()).await {
        Ok(identity) => Ok(identity.map(|i| {
            let name = i
                .consumer
                .map_or("-".to_string(), |c| c.username.to_string());
            if i.anonymous {
                format!("anonymous:{name}")
            } else {
                name
            }
        })),
        Err(Rejection::Unauthenticated { challenge, .. }) => {
            Err(challenge.to_str().unwrap().to_string())
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn all_needs_every_policy_and_takes_the_first_consumer() {
    let ok = chain(AuthMode::All, vec![(Ok("alice"), None), (Ok("bob"), None)]);
    assert_eq!(run(&ok).await, Ok(Some("alice".into())));
    let one_fails = chain(AuthMode::All, vec![(Ok("alice"), None), (Err(true), None)]);
    assert_eq!(run(&one_fails).await, Err("Presented".into()));
    let anonymous = chain(
        AuthMode::All,
        vec![(Err(false), Some("guest")), (Ok("bob"), None)],
    );
    assert_eq!(
        run(&anonymous).await,
        Ok(Some("bob".into())),
        "a real identity beats the anonymous one"
    );
}

#[tokio::test]
async fn any_takes_the_first_success_and_reports_the_most_telling_failure() {
    let second = chain(AuthMode::Any, vec![(Err(false), None), (Ok("bob"), None)]);
    assert_eq!(run(&second).await, Ok(Some("bob".into())));
    let failures = chain(AuthMode::Any, vec![(Err(false), None), (Err(true), None)]);
    assert_eq!(
        run(&failures).await,
        Err("Presented".into()),
        "a refused credential beats a missing one"
    );
    let anonymous = chain(
        AuthMode::Any,
        vec![(Err(true), Some("guest")), (Err(false), None)],
    );
    assert_eq!(run(&anonymous).await, Ok(Some("anonymous:guest".into())));
}

#[test]
fn identity_headers_go_upstream() {
    let consumers = consumers();
    let mut headers = http::HeaderMap::new();
    Identity::anonymous(consumers.by_username("guest").unwrap().clone()).apply(&mut headers);
    assert_eq!(headers["x-consumer-username"], "guest");
    assert_eq!(headers["x-consumer-id"], "guest");
    assert_eq!(headers["x-anonymous-consumer"], "true");
}

#[test]
fn a_reload_takes_over_the_lists_that_did_not_change() {
    let yaml = |consumer_key: &str, leeway: &str| {
        config::Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\n\
                 consumers: [{{username: alice, keys: [{{key: {consumer_key}}}]}}]\n\
                 policy_defaults: {{policies: [{{type: key-auth}}]}}\n\
                 upstreams: {{u: {{targets: ['127.0.0.1:2']}}}}\n\
                 routes: [{{match: {{path_prefix: /}}, upstream: u, policies: [{{type: jwt, leeway: {leeway}}}]}}]\n"
            ),
            "t",
        )
        .unwrap()
    };
    let route_list = |set: &PolicySet, config: &config::Config| {
        let policies = config.routes[0].policies.as_ref().unwrap();
        set.list(AuthMode::All, policies, &Metrics::default())
            .unwrap()
    };
    let first_config = yaml("key-0123456789", "60s");
    let first = PolicySet::compile(&first_config, None, &Metrics::default()).unwrap();
    let first_route = route_list(&first, &first_config);

    let same = PolicySet::compile(&first_config, Some(&first), &Metrics::default()).unwrap();
    assert!(Arc::ptr_eq(&first.consumers, &same.consumers));
    assert!(
        Arc::ptr_eq(&first.global, &same.global),
        "unchanged defaults keep their state"
    );
    assert!(Arc::ptr_eq(&first_route, &route_list(&same, &first_config)));

    let leeway = yaml("key-0123456789", "30s");
    let changed = PolicySet::compile(&leeway, Some(&same), &Metrics::default()).unwrap();
    assert!(Arc::ptr_eq(&first.global, &changed.global));
    assert!(
        !Arc::ptr_eq(&first_route, &route_list(&changed, &leeway)),
        "a changed policy starts afresh"
    );

    let new_key = yaml("key-9876543210", "30s");
    let rekeyed = PolicySet::compile(&new_key, Some(&changed), &Metrics::default()).unwrap();
    assert!(!Arc::ptr_eq(&changed.consumers, &rekeyed.consumers));
    assert!(
        !Arc::ptr_eq(&changed.global, &rekeyed.global),
        "lists hold the consumers they were built with"
    );
}

#[tokio::test]
async fn decisions_become_verdicts_and_refusals_signals() {
    let chain = chain(
        AuthMode::Any,
        vec![
            (Err(false), None),
            (Err(true), Some("guest")),
            (Ok("bob"), None),
        ],
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let mut outcome = Outcome::default();
    run_with(&chain, &mut parts, &mut outcome).await.unwrap();
    assert_eq!(
        outcome.verdicts,
        ["fixed:deny", "fixed:anonymous", "fixed:allow"]
    );
    assert_eq!(verdict("jwt", "deny"), "jwt:deny");
    assert!(std::ptr::eq(verdict("jwt", "deny"), verdict("jwt", "deny")));
    assert_eq!(
        *outcome.signals.0.lock().unwrap(),
        [Signal::AuthFailure { policy: "fixed" }],
        "an anonymous pass is not a failure"
    );
}

/// A guard that records what it saw and answers what it was built with.
struct Gate {
    refuse: bool,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Guard for Gate {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        response: &'a mut http::HeaderMap,
    ) -> GuardCheck<'a> {
        let who = caller
            .identity
            .and_then(|i| i.consumer.as_deref())
            .map_or("-".to_string(), |c| c.username.to_string());
        let groups_header = parts.headers.contains_key(consumers::X_CONSUMER_ID);
        self.seen
            .lock()
            .unwrap()
            .push(format!("{who} identity-headers:{groups_header}"));
        response.insert("x-gate", HeaderValue::from_static("seen"));
        GuardCheck::Now(if self.refuse {
            Err(Rejection::Denied {
                status: StatusCode::FORBIDDEN,
                reason: "gate_closed",
                message: "closed".into(),
                headers: None,
            })
        } else {
            Ok(())
        })
    }
}

fn gated_chain(
    gates: Vec<(Phase, bool)>,
    auth: Result<&'static str, bool>,
) -> (Chain, Arc<std::sync::Mutex<Vec<String>>>) {
    let consumers = consumers();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut steps: Vec<Step> = gates
        .into_iter()
        .map(|(phase, refuse)| {
            Step::new(
                "gate",
                phase,
                StepPolicy::Guard(Box::new(Gate {
                    refuse,
                    seen: seen.clone(),
                })),
            )
        })
        .collect();
    // Declared last, runs by its phase.
    steps.push(Step::new(
        "fixed",
        Phase::Authentication,
        StepPolicy::Authenticator {
            policy: Box::new(Fixed(auth, consumers.clone())),
            anonymous: None,
        },
    ));
    steps.sort_by_key(|s| s.phase);
    let list = PolicyList {
        mode: AuthMode::All,
        steps,
        body_limit: None,
    };
    (Chain::new("r", Arc::new(list), &Metrics::default()), seen)
}

#[tokio::test]
async fn guards_run_by_phase_and_authorization_sees_the_consumer() {
    let (chain, seen) = gated_chain(
        vec![
            (Phase::Traffic, false),
            (Phase::Access, false),
            (Phase::Authorization, false),
        ],
        Ok("alice"),
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let mut outcome = Outcome::default();
    let identity = run_with(&chain, &mut parts, &mut outcome).await.unwrap();
    assert_eq!(&*identity.unwrap().consumer.unwrap().username, "alice");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "- identity-headers:false",
            "alice identity-headers:true",
            "alice identity-headers:true",
        ],
        "access before authentication; authorization and traffic after, with the identity headers set"
    );
    assert_eq!(
        outcome.verdicts,
        ["gate:allow", "fixed:allow", "gate:allow", "gate:allow"]
    );
    assert_eq!(outcome.response_headers["x-gate"], "seen");
    assert_eq!(parts.headers[consumers::X_CONSUMER_ID], "alice");
}

#[tokio::test]
async fn a_refusing_guard_stops_the_chain_and_signals() {
    let (chain, seen) = gated_chain(
        vec![(Phase::Authorization, true), (Phase::Traffic, false)],
        Ok("bob"),
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let mut outcome = Outcome::default();
    let refused = run_with(&chain, &mut parts, &mut outcome)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.kind(), "gate_closed");
    assert_eq!(seen.lock().unwrap().len(), 1, "traffic never ran");
    assert_eq!(outcome.verdicts, ["fixed:allow", "gate:deny"]);
    assert_eq!(
        *outcome.signals.0.lock().unwrap(),
        [Signal::Denied {
            policy: "gate",
            reason: "gate_closed"
        }]
    );
}

#[tokio::test]
async fn failed_authentication_stops_before_authorization() {
    let (chain, seen) = gated_chain(vec![(Phase::Authorization, false)], Err(true));
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let refused = run_with(&chain, &mut parts, &mut Outcome::default())
        .await
        .unwrap_err();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(seen.lock().unwrap().is_empty());
}
