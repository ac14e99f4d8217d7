//! The `concord` binary itself: `concord token`, and `concord serve` configured through
//! `CONCORD_*` variables in dev mode, drained by SIGTERM (op 7 to clients, exit 0).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use concord_gateway::config::DEV_TOKEN_SECRET;
use concord_protocol::token;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn token_command_mints_a_verifiable_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "token",
            "--secret",
            "S",
            "--user-id",
            "42",
            "--username",
            "alice",
            "--guilds",
            "1,2,3",
            "--ttl",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap();
    let claims = token::verify(b"S", tok.trim(), 0).unwrap();
    assert_eq!(
        (claims.uid, claims.name.as_str(), claims.guilds.as_slice()),
        (42, "alice", &[1, 2, 3][..])
    );
}

#[test]
fn serve_rejects_bad_settings_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--session-queue", "5000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session-queue"), "{err}");
}

#[tokio::test]
async fn dev_mode_node_from_env_drains_on_sigterm() {
    let (client, api, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("serve")
        .env("CONCORD_LISTEN", format!("127.0.0.1:{client}"))
        .env("CONCORD_API_LISTEN", format!("127.0.0.1:{api}"))
        .env("CONCORD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("CONCORD_DRAIN_GRACE", "5s")
        .env("CONCORD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Dev mode prints a token signed with the dev secret.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = stdout
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("dev token"))
        .unwrap();
    // Keep reading, so the node's stdout never fills up or breaks.
    std::thread::spawn(move || stdout.for_each(drop));
    let tok = line.rsplit(' ').next().unwrap().to_owned();
    assert!(token::verify(DEV_TOKEN_SECRET.as_bytes(), &tok, 0).is_ok());

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{client}/?v=10&encoding=json"))
            .await
            .unwrap();
    let mut next = async || -> Option<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()?
            {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(f)) => return f.map(|f| json!({"close": u16::from(f.code)})),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    assert_eq!(next().await.unwrap()["op"], 10);
    ws.send(Message::text(
        json!({"op": 2, "d": {"token": tok, "intents": 513, "properties": {}}}).to_string(),
    ))
    .await
    .unwrap();
    let mut frames = Vec::new();
    let mut kill = Command::new("kill");
    let mut killed = false;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "GUILD_CREATE" && !killed {
                    assert!(
                        kill.args(["-TERM", &child.id().to_string()])
                            .status()
                            .unwrap()
                            .success()
                    );
                    killed = true;
                }
                frames.push(v);
            }
            Message::Close(f) => {
                frames.push(json!({"close": f.map(|f| u16::from(f.code))}));
                break;
            }
            _ => {}
        }
    }
    assert!(killed, "READY and GUILD_CREATE arrived: {frames:?}");
    assert!(
        frames.iter().any(|f| f["op"] == 7),
        "op 7 on drain: {frames:?}"
    );
    assert_eq!(frames.last().unwrap()["close"], 4000);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
