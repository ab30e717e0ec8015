// Package hello is an AWS-Lambda-style Go handler: the event is the CloudEvent's data, the
// return value becomes the reply event's data.
package hello

import (
	"context"
	"encoding/json"
	"os"

	"klambda.dev/function"
)

// Handler greets the event's name, saying which invocation answered.
func Handler(ctx context.Context, event json.RawMessage) (any, error) {
	var in struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(event, &in)
	if in.Name == "" {
		in.Name = "world"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	reply := map[string]any{"message": greeting + ", " + in.Name + "!"}
	if lc, ok := function.FromContext(ctx); ok {
		reply["requestId"] = lc.RequestID
	}
	return reply, nil
}
