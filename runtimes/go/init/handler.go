// Package handler is the knative-lambda function {{name}} ({{runtime}}): Handler gets the
// CloudEvent's data as JSON; what it returns becomes the reply event's data, an error answers
// 500 with its message. The platform supplies the program that serves it.
package handler

import (
	"context"
	"encoding/json"
	"fmt"
)

// Handler greets whoever the event names.
func Handler(ctx context.Context, event json.RawMessage) (any, error) {
	var in struct {
		Name string `json:"name"`
	}
	if len(event) > 0 && string(event) != "null" {
		if err := json.Unmarshal(event, &in); err != nil {
			return nil, fmt.Errorf("the event is not {\"name\": …}: %w", err)
		}
	}
	if in.Name == "" {
		in.Name = "world"
	}
	return map[string]string{"message": fmt.Sprintf("Hello, %s!", in.Name)}, nil
}
