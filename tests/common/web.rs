//! The relay's HTTP API and metrics served in-process on 127.0.0.1:0, and
//! a client that logs in the way a person or a program does.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren::admin::Reply;
use warren::admin::access::{self, Asker};
use warren::protocol::Role;
use warren::relay::Relay;
use warren::store::credentials::{CredKind, NewCredential};

/// The API (and `/metrics`) of a test relay; stops when dropped.
pub struct TestWeb {
    pub base: String,
    pub metrics: String,
    pub http: reqwest::Client,
    pub relay: Arc<Relay>,
    stop: CancellationToken,
}

impl TestWeb {
    pub async fn start(relay: Arc<Relay>) -> TestWeb {
        Self::start_with(relay, false).await
    }

    /// `secure`: as behind a TLS proxy (`--console-url https://…`).
    pub async fn start_with(relay: Arc<Relay>, secure: bool) -> TestWeb {
        let stop = CancellationToken::new();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", api.local_addr().unwrap());
        let metrics_url = format!("http://{}/metrics", metrics.local_addr().unwrap());
        relay
            .store()
            .set_setting(warren::web::CONSOLE_URL_SETTING, &base)
            .unwrap();
        let web = warren::web::Web {
            relay: relay.clone(),
            secure,
        };
        tokio::spawn(warren::web::serve(api, web, stop.clone()));
        tokio::spawn(warren::web::serve_metrics(
            metrics,
            relay.clone(),
            stop.clone(),
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        TestWeb {
            base,
            metrics: metrics_url,
            http,
            relay,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    /// A one-time login URL, as `console-login` prints it.
    pub fn login_url(&self, system: Option<&str>, role: Role, who: &str) -> String {
        let done =
            access::console_login(self.relay.store(), &Asker { system, role, who }, None).unwrap();
        match done.reply {
            Reply::ConsoleLogin(link) => link.url,
            other => panic!("console-login replied {other:?}"),
        }
    }

    /// Opens a login URL; returns the session cookie (`name=value`).
    pub async fn open_login(&self, url: &str) -> Result<String, reqwest::Response> {
        let resp = self.http.get(url).send().await.unwrap();
        if !resp.status().is_success() {
            return Err(resp);
        }
        let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        Ok(set.split(';').next().unwrap().to_string())
    }

    /// Logs in through a fresh one-time URL; returns a session.
    pub async fn session(&self, system: Option<&str>, role: Role, who: &str) -> Session {
        let url = self.login_url(system, role, who);
        let cookie = self.open_login(&url).await.unwrap();
        let me: serde_json::Value = self
            .http
            .get(self.url("api/v1/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Session {
            cookie,
            csrf: me["csrf"].as_str().unwrap().to_string(),
        }
    }

    /// A bearer token, as `token create` makes it.
    pub fn token(&self, system: &str, role: Role) -> String {
        self.relay
            .store()
            .issue_credential(&NewCredential {
                kind: CredKind::Token,
                system: Some(system),
                role,
                who: "robot",
                now: warren::store::now(),
                ttl_secs: 3600,
            })
            .unwrap()
            .secret
    }

    /// GET with a bearer token; the status and the JSON body.
    pub async fn get(&self, token: &str, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn scrape(&self) -> String {
        let resp = self.http.get(&self.metrics).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        resp.text().await.unwrap()
    }
}

impl Drop for TestWeb {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A console session: its cookie and CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}
