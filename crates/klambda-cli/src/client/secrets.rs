//! `klambda secrets set|list|delete`: functions' secret env values, kept by `klambda up` in its
//! data directory and read only where a function starts (docs/SECURITY.md). A function names
//! them in `klambda.json`: `"secrets": {"DB_PASSWORD": "db-password"}`.

use anyhow::{Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::{Api, Output};

/// What `klambda secrets` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secrets {
    /// Sets a secret to a value (read from stdin when none is given, so it stays out of the
    /// shell's history).
    Set(String, Option<String>),
    /// The names set.
    List,
    /// Removes one.
    Delete(String),
}

/// `klambda secrets …` against `platform`.
pub async fn secrets(platform: &Api, command: Secrets, output: Output) -> Result<i32> {
    match command {
        Secrets::Set(name, value) => {
            let value = match value {
                Some(value) => value,
                None => {
                    let mut read = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut read)?;
                    read.strip_suffix('\n').unwrap_or(&read).to_owned()
                }
            };
            let request = Request::put(format!("{}/secrets/{name}", platform.endpoint))
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(value)))?;
            let answer = platform.send(request).await?;
            if answer.status != 204 {
                bail!(
                    "the platform did not set the secret ({}): {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
            match output {
                Output::Json => say!("{}", serde_json::json!({ "set": name })),
                Output::Text => say!("set {name}"),
            }
        }
        Secrets::List => {
            let names: Vec<String> = platform.get_json("/secrets").await?.unwrap_or_default();
            if output == Output::Json {
                say!("{}", serde_json::to_string(&names)?);
            } else {
                for name in names {
                    say!("{name}");
                }
            }
        }
        Secrets::Delete(name) => {
            let request = Request::delete(format!("{}/secrets/{name}", platform.endpoint))
                .body(Full::new(Bytes::new()))?;
            let answer = platform.send(request).await?;
            match answer.status {
                204 if output == Output::Json => {
                    say!("{}", serde_json::json!({ "deleted": name }));
                }
                204 => say!("deleted {name}"),
                404 => {
                    eprintln!("no secret named {name}");
                    return Ok(1);
                }
                status => bail!(
                    "the platform did not delete the secret ({status}): {}",
                    String::from_utf8_lossy(&answer.body)
                ),
            }
        }
    }
    Ok(0)
}
