module klambda.dev/function

go 1.24
