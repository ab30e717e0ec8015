//! The knative-lambda function {{name}} ({{runtime}}): `handler` gets the CloudEvent's data,
//! what it returns becomes the reply event's data, an error answers 500 with its message. The
//! platform supplies the program that serves it.

use klambda_function::{Context, Error};
use serde::{Deserialize, Serialize};

/// The event this function takes.
#[derive(Debug, Deserialize)]
pub struct Greeting {
    /// Who to greet.
    #[serde(default)]
    pub name: Option<String>,
}

/// What it answers.
#[derive(Debug, Serialize, PartialEq)]
pub struct Reply {
    /// The greeting.
    pub message: String,
}

/// Greets whoever the event names.
pub async fn handler(event: Greeting, _ctx: Context) -> Result<Reply, Error> {
    let name = event.name.unwrap_or_else(|| "world".to_owned());
    if name.trim().is_empty() {
        return Err("the name is blank".into());
    }
    Ok(Reply {
        message: format!("Hello, {name}!"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: Option<&str>) -> Result<Reply, Error> {
        let event = Greeting {
            name: name.map(str::to_owned),
        };
        klambda_function::block_on(handler(event, Context::for_test("{{name}}")))
    }

    #[test]
    fn greets_by_name() {
        assert_eq!(call(Some("ada")).map(|r| r.message).ok(), Some("Hello, ada!".to_owned()));
    }

    #[test]
    fn refuses_a_blank_name() {
        assert!(call(Some(" ")).is_err());
    }
}
