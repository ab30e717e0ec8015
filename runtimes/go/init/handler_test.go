package handler

import (
	"context"
	"encoding/json"
	"testing"
)

func TestHandlerGreetsByName(t *testing.T) {
	got, err := Handler(context.Background(), json.RawMessage(`{"name":"ada"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got.(map[string]string)["message"] != "Hello, ada!" {
		t.Fatalf("got %v", got)
	}
}

func TestHandlerRefusesAnEventItCannotRead(t *testing.T) {
	if _, err := Handler(context.Background(), json.RawMessage(`[1]`)); err == nil {
		t.Fatal("no error for an array")
	}
}
