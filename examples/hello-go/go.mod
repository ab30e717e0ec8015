module example.com/hello-go

go 1.24

require klambda.dev/function v0.1.0

// The platform's build resolves it to its own copy; this line lets `go test` run here.
replace klambda.dev/function => ../../runtimes/go/function
