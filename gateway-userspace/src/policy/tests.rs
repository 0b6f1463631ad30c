use http::StatusCode;

use super::*;

/// A policy that answers what it was built with.
struct Fixed(Result<&'static str, bool>, Arc<Consumers>);

impl Authenticator for Fixed {
    fn on_response(&self, headers: &mut http::HeaderMap) {
        headers.append("x-seen-by", HeaderValue::from_static("fixed"));
    }

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
            .map(|(answer, anonymous)| Step {
                kind: "fixed",
                policy: Box::new(Fixed(answer, consumers.clone())),
                anonymous: anonymous.map(|a| consumers.by_username(a).unwrap().clone()),
            })
            .collect(),
    };
    Chain::new("r", Arc::new(list), &Metrics::default())
}

async fn run(chain: &Chain) -> Result<Option<String>, String> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let mut verdicts = Vec::new();
    match chain.run(&mut parts, &mut verdicts).await {
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
async fn decisions_become_verdicts_and_every_policy_sees_the_response() {
    let chain = chain(
        AuthMode::Any,
        vec![
            (Err(false), None),
            (Err(true), Some("guest")),
            (Ok("bob"), None),
        ],
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let mut verdicts = Vec::new();
    chain.run(&mut parts, &mut verdicts).await.unwrap();
    assert_eq!(
        verdicts,
        ["policy:deny", "policy:anonymous", "policy:allow"]
    );
    assert_eq!(verdict("jwt", "deny"), "jwt:deny");
    let mut headers = http::HeaderMap::new();
    chain.on_response(&mut headers);
    assert_eq!(headers.get_all("x-seen-by").iter().count(), 3);
}
