// knative-lambda Go shim: serves the function's Go handler as a CloudEvents HTTP service. See
// runtimes/README.md for the contract. Rendered for one function ({{module}}, handler {{handler}})
// and built inside its module, so its go.mod, go.sum and vendor/ apply. Standard library only.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	fn "{{module}}"
)

// The key the invocation is stored under in the handler's context; klambda.dev/function reads it.
const invocationKey = "klambda.dev/function#invocation"

const maxBody = 1 << 20

var handler func(context.Context, json.RawMessage) (any, error) = fn.{{handler}}

type problem struct {
	Type       string   `json:"type"`
	Title      string   `json:"title"`
	Status     int      `json:"status"`
	Detail     string   `json:"detail"`
	ErrorType  string   `json:"errorType,omitempty"`
	StackTrace []string `json:"stackTrace,omitempty"`
}

func answer(w http.ResponseWriter, p problem) {
	p.Type = "about:blank"
	w.Header().Set("content-type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// CloudEvents binary mode: percent-encode space, '"', '%' and every byte outside U+0021-U+007E.
func encodeHeader(value string) string {
	var out strings.Builder
	for _, b := range []byte(value) {
		if b > 0x20 && b < 0x7f && b != '"' && b != '%' {
			out.WriteByte(b)
		} else {
			fmt.Fprintf(&out, "%%%02X", b)
		}
	}
	return out.String()
}

// One JSON line on stderr per failed invocation, with its request id (Lambda's "ERROR RequestId").
func logFailure(requestID, kind, message string, stack []string) {
	line := map[string]any{"level": "error", "requestId": requestID, "kind": kind, "message": message}
	if len(stack) > 0 {
		line["stack"] = stack[:min(len(stack), 8)]
	}
	text, _ := json.Marshal(line)
	fmt.Fprintln(os.Stderr, string(text))
}

// readEvent returns the event's attributes and its data as JSON.
func readEvent(r *http.Request, body []byte) (map[string]string, json.RawMessage, error) {
	contentType := r.Header.Get("content-type")
	if strings.HasPrefix(contentType, "application/cloudevents-batch") {
		return nil, nil, errors.New("batch mode is not supported")
	}
	attributes := map[string]string{}
	if strings.HasPrefix(contentType, "application/cloudevents") {
		var structured map[string]json.RawMessage
		if err := json.Unmarshal(body, &structured); err != nil {
			return nil, nil, err
		}
		data := json.RawMessage("null")
		for name, raw := range structured {
			switch name {
			case "data":
				data = raw
			case "data_base64":
				var encoded string
				if err := json.Unmarshal(raw, &encoded); err != nil {
					return nil, nil, err
				}
				decoded, err := base64.StdEncoding.DecodeString(encoded)
				if err != nil {
					return nil, nil, err
				}
				data, _ = json.Marshal(string(decoded))
			default:
				var text string
				if json.Unmarshal(raw, &text) != nil {
					text = string(raw)
				}
				attributes[name] = text
			}
		}
		return attributes, data, nil
	}
	for name, values := range r.Header {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "ce-") && len(values) > 0 {
			value, err := url.PathUnescape(values[0])
			if err != nil {
				value = values[0]
			}
			attributes[lower[3:]] = value
		}
	}
	switch {
	case len(body) == 0:
		return attributes, json.RawMessage("null"), nil
	case contentType == "" || strings.Contains(contentType, "json"):
		if !json.Valid(body) {
			return nil, nil, errors.New("the data is not valid JSON")
		}
		return attributes, json.RawMessage(body), nil
	default:
		text, _ := json.Marshal(string(body))
		return attributes, text, nil
	}
}

type outcome struct {
	result any
	err    error
	stack  []string
}

// call runs the handler, turning a panic into an error with its stack.
func call(ctx context.Context, data json.RawMessage) (done outcome) {
	defer func() {
		if recovered := recover(); recovered != nil {
			done = outcome{
				err:   fmt.Errorf("panic: %v", recovered),
				stack: strings.Split(strings.TrimSpace(string(debug.Stack())), "\n"),
			}
		}
	}()
	result, err := handler(ctx, data)
	return outcome{result: result, err: err}
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host := os.Getenv("KLAMBDA_BIND")
	if host == "" {
		host = "0.0.0.0"
	}
	functionName := os.Getenv("KLAMBDA_FUNCTION_NAME")
	if functionName == "" {
		functionName = "function"
	}
	seconds, err := strconv.Atoi(os.Getenv("KLAMBDA_TIMEOUT_SECONDS"))
	if err != nil || seconds <= 0 {
		seconds = 30
	}
	timeout := time.Duration(seconds) * time.Second

	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"status":"alive"}`)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/" {
			answer(w, problem{Title: "Method not allowed", Status: 405, Detail: "POST / with a CloudEvent"})
			return
		}
		// The subscriber URI may say what becomes of the reply (a Knative Trigger cannot):
		// ?replyType=T types it T; ?reply=none drops it (an asynchronous invocation's result).
		replyType := r.URL.Query().Get("replyType")
		dropReply := r.URL.Query().Get("reply") == "none"
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			answer(w, problem{Title: "Invalid CloudEvent", Status: 400, Detail: err.Error()})
			return
		}
		if len(body) > maxBody {
			answer(w, problem{Title: "Payload too large", Status: 413, Detail: fmt.Sprintf("limit %d bytes", maxBody)})
			return
		}
		attributes, data, err := readEvent(r, body)
		if err != nil {
			answer(w, problem{Title: "Invalid CloudEvent", Status: 400, Detail: err.Error()})
			return
		}
		for _, required := range []string{"id", "source", "type", "specversion"} {
			if attributes[required] == "" {
				answer(w, problem{Title: "Invalid CloudEvent", Status: 400, Detail: "missing " + required})
				return
			}
		}
		id := attributes["id"]
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		ctx = context.WithValue(ctx, invocationKey, map[string]any{
			"requestId": id, "functionName": functionName, "cloudEvent": attributes,
		})
		done := make(chan outcome, 1)
		go func() { done <- call(ctx, data) }()
		var result outcome
		select {
		case result = <-done:
		case <-ctx.Done():
			message := fmt.Sprintf("handler ran past %d s", seconds)
			logFailure(id, "timeout", message, nil)
			answer(w, problem{Title: "Handler timeout", Status: 504, Detail: message})
			return
		}
		if result.err != nil {
			logFailure(id, "error", result.err.Error(), result.stack)
			errorType := fmt.Sprintf("%T", result.err)
			if result.stack != nil {
				errorType = "Panic"
			}
			answer(w, problem{
				Title: "Handler error", Status: 500, Detail: result.err.Error(),
				ErrorType: errorType, StackTrace: result.stack,
			})
			return
		}
		if result.result == nil || dropReply {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		reply, err := json.Marshal(result.result)
		if err != nil {
			logFailure(id, "error", err.Error(), nil)
			answer(w, problem{Title: "Handler error", Status: 500, Detail: "the result is not JSON: " + err.Error()})
			return
		}
		if replyType == "" {
			replyType = attributes["type"] + ".response"
		}
		headers := w.Header()
		headers.Set("ce-specversion", "1.0")
		headers.Set("ce-id", encodeHeader(id+".response"))
		headers.Set("ce-source", encodeHeader("/functions/"+functionName))
		headers.Set("ce-type", encodeHeader(replyType))
		headers.Set("content-type", "application/json")
		_, _ = w.Write(reply)
	})

	// KLAMBDA_BIND: the local runner serves on loopback only; a container listens on every interface.
	listener, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start: %v\n", err)
		os.Exit(1)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stopped := make(chan struct{})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		shutdown, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_ = server.Shutdown(shutdown)
		close(stopped)
	}()
	started, _ := json.Marshal(map[string]any{"message": "serving", "port": port, "host": host, "handler": "{{handler}}"})
	fmt.Println(string(started))
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("cannot serve: %v", err)
	}
	<-stopped
}
