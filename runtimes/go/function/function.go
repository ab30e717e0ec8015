// Package function gives a knative-lambda Go handler its invocation's Lambda context: the
// request id, the deadline, the function's name and the CloudEvent's attributes.
//
//	func Handler(ctx context.Context, event json.RawMessage) (any, error) {
//		if lc, ok := function.FromContext(ctx); ok {
//			log.Printf("request %s of %s", lc.RequestID, lc.FunctionName)
//		}
//		...
//	}
//
// Require it as klambda.dev/function v0.1.0; the platform's build resolves it to its own copy
// (runtimes/go/function), never to a module proxy. Standard library only.
package function

import (
	"context"
	"time"
)

// ContextKey is the key the platform's program stores the invocation under, as a plain string
// so the program and this package need not share a type.
const ContextKey = "klambda.dev/function#invocation"

// Context is one invocation's Lambda context.
type Context struct {
	// RequestID is the CloudEvent's id (Lambda's awsRequestId).
	RequestID string
	// FunctionName is the function's name.
	FunctionName string
	// Deadline is when the invocation times out.
	Deadline time.Time
	// CloudEvent holds the event's attributes (id, source, type, subject, extensions…).
	CloudEvent map[string]string
}

// FromContext returns the invocation's Lambda context, if ctx carries one.
func FromContext(ctx context.Context) (Context, bool) {
	values, ok := ctx.Value(ContextKey).(map[string]any)
	if !ok {
		return Context{}, false
	}
	lc := Context{CloudEvent: map[string]string{}}
	lc.RequestID, _ = values["requestId"].(string)
	lc.FunctionName, _ = values["functionName"].(string)
	if attributes, ok := values["cloudEvent"].(map[string]string); ok {
		lc.CloudEvent = attributes
	}
	lc.Deadline, _ = ctx.Deadline()
	return lc, true
}

// RemainingTime is how long the invocation has left.
func (lc Context) RemainingTime() time.Duration {
	if lc.Deadline.IsZero() {
		return 0
	}
	return max(time.Until(lc.Deadline), 0)
}
