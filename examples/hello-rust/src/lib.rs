//! An AWS-Lambda-style Rust handler: the event is the CloudEvent's data, the return value
//! becomes the reply event's data.

use klambda_function::{Context, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Event {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Serialize)]
pub struct Reply {
    message: String,
    #[serde(rename = "requestId")]
    request_id: String,
}

/// Greets the event's name, saying which invocation answered.
pub async fn handler(event: Event, ctx: Context) -> Result<Reply, Error> {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
    let name = event.name.unwrap_or_else(|| "world".to_owned());
    Ok(Reply {
        message: format!("{greeting}, {name}!"),
        request_id: ctx.request_id,
    })
}
