# The platform's images: one per binary (the five stages and the webhook gateway), each a
# static binary on an empty base with CA certificates and a non-root user, nothing else (no
# shell, no package manager). One image per binary, not one with all of them, because each is a
# Knative Service scaled from zero on its own: a node pulls only the ~10 MiB its stage needs.
#
# Build one with its stage as the target: `--target parser`, `--target webhook-gateway`, …
# `scripts/images` builds all of them (docs/INSTALL.md, "Images").
#
# Where the binaries come from (`--build-arg BINARIES=`):
# - `source` (default, the release workflow): compiled here from the repository, in Rust's
#   image.
# - `prebuilt`: the static binaries `scripts/images` compiled on the machine with the same
#   command, copied from `.images/` in the build context (machines that cannot pull Rust's image,
#   and CI, which reuses its compiled dependencies).
ARG BINARIES=source
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY . .
# Statically linked against glibc (crt-static), for the host's own architecture; the same
# command as scripts/images.
RUN sh images/compile /out

FROM scratch AS prebuilt
COPY .images/ /out/

FROM ${BINARIES} AS binaries

# The base every image shares: CA roots for S3 and the Kubernetes API over TLS, and the
# non-root user 65532 the manifests' securityContext (runAsNonRoot) expects.
FROM scratch AS base
COPY --from=binaries /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY images/passwd /etc/passwd
COPY images/group /etc/group
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 8080

FROM base AS parser
COPY --from=binaries /out/parser /usr/local/bin/parser
ENTRYPOINT ["/usr/local/bin/parser"]

FROM base AS context-uploader
COPY --from=binaries /out/context-uploader /usr/local/bin/context-uploader
ENTRYPOINT ["/usr/local/bin/context-uploader"]

FROM base AS job-launcher
COPY --from=binaries /out/job-launcher /usr/local/bin/job-launcher
ENTRYPOINT ["/usr/local/bin/job-launcher"]

FROM base AS service-deployer
COPY --from=binaries /out/service-deployer /usr/local/bin/service-deployer
ENTRYPOINT ["/usr/local/bin/service-deployer"]

FROM base AS status-reporter
COPY --from=binaries /out/status-reporter /usr/local/bin/status-reporter
ENTRYPOINT ["/usr/local/bin/status-reporter"]

FROM base AS webhook-gateway
COPY --from=binaries /out/webhook-gateway /usr/local/bin/webhook-gateway
ENTRYPOINT ["/usr/local/bin/webhook-gateway"]
