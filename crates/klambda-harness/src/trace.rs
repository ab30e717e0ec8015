//! W3C trace context carried through events (`traceparent` extension and HTTP header), so one
//! trace spans a function's whole journey.
//!
//! With OTLP configured the span ids are the real spans'. Without it, a hop's span id is derived
//! from the id of the event it emits: still unique per hop, and deterministic, so replaying an
//! input reproduces the identical reply.

use std::fmt;

use cloudevents::Event;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use span_ids::derive8;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The name of the extension attribute and HTTP header.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// 8-byte parent span id.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` when malformed or all-zero.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        hex::decode_to_slice(flags, &mut flag).ok()?;
        let lowercase = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
        if trace_id == [0; 16] || span_id == [0; 8] || !lowercase(trace) || !lowercase(span) {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: flag[0],
        })
    }

    /// The trace context of an incoming event: its `traceparent` extension, else the HTTP
    /// header the broker forwarded.
    pub fn of_event(event: &Event, header: Option<&str>) -> Option<Self> {
        event
            .extension(TRACEPARENT)
            .and_then(|v| Self::parse(&v.to_string()))
            .or_else(|| header.and_then(Self::parse))
    }

    /// The same trace, one hop further: `span_id` becomes the emitting hop's span.
    pub fn child(self, span_id: [u8; 8]) -> Self {
        Self { span_id, ..self }
    }

    /// Sets this as the OpenTelemetry parent of `span` (no effect without the OTel layer).
    pub fn adopt_as_parent_of(self, span: &tracing::Span) {
        let context = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(context);
        let _ = span.set_parent(parent);
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// The trace context for an event emitted while handling `input` under `span`: the real span's
/// context when OpenTelemetry records it, else the input's trace with a span id derived from
/// `emitted_id`. `None` when there is no trace to continue.
pub fn for_emitted(
    input: Option<TraceParent>,
    span: &tracing::Span,
    emitted_id: &str,
) -> Option<TraceParent> {
    let context = span.context();
    let otel = context.span().span_context().clone();
    if otel.is_valid() {
        return Some(TraceParent {
            trace_id: otel.trace_id().to_bytes(),
            span_id: otel.span_id().to_bytes(),
            flags: otel.trace_flags().to_u8(),
        });
    }
    input.map(|parent| parent.child(derive8(emitted_id)))
}

/// Stamps `traceparent` on `event`.
pub fn stamp(event: &mut Event, trace: Option<TraceParent>) {
    if let Some(trace) = trace {
        event.set_extension(TRACEPARENT, trace.to_string());
    }
}

mod span_ids {
    /// Eight bytes derived from `text` (FNV-1a 64), never zero. Not cryptographic: it only
    /// needs to differ between the events one hop emits.
    pub(super) fn derive8(text: &str) -> [u8; 8] {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        if hash == 0 {
            hash = 1;
        }
        hash.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_w3c_traceparent() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.flags, 1);
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = tracing::Span::none();
        let child = for_emitted(Some(parent), &span, "reply-1").unwrap();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child, for_emitted(Some(parent), &span, "reply-1").unwrap());
        assert_ne!(child, for_emitted(Some(parent), &span, "reply-2").unwrap());
        assert_eq!(for_emitted(None, &span, "reply-1"), None);
    }
}
