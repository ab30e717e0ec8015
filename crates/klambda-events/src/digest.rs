//! The content digest: sha256 over the normalised source, the runtime and its template version.
//!
//! Part of the contract, not of the parser: the parser names a submission's digest, and every
//! stage that receives a spec with a digest can check that the one names the other (a forged
//! `parser.completed` carrying another function's digest would otherwise make its source the
//! cached build of that digest).
//!
//! The input is a length-prefixed canonical encoding, not JSON, so it does not depend on field
//! order, whitespace or how a file's content was encoded in the submission. Env, resources and
//! triggers are deliberately left out: they change the deployment, not the image, so changing
//! them redeploys without rebuilding. So is the handler of an interpreted runtime (the shim
//! loads it by name as it starts); a compiled runtime's handler is compiled into the binary
//! ([`crate::Language::is_compiled`]), so it is part of the digest.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::spec::{ContentEncoding, Source};
use crate::{ContentDigest, Runtime};

const DOMAIN: &[u8] = b"knative-lambda content digest v1\n";

/// The digest of `source` built for `runtime` with `handler`.
pub fn content_digest(runtime: Runtime, handler: &str, source: &Source) -> ContentDigest {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    field(&mut hash, runtime.id().as_bytes());
    field(&mut hash, runtime.template_version().as_bytes());
    if runtime.language().is_compiled() {
        field(&mut hash, b"handler");
        field(&mut hash, handler.as_bytes());
    }
    match source {
        Source::Inline { files } => {
            field(&mut hash, b"inline");
            hash.update((files.len() as u64).to_be_bytes());
            for file in files {
                field(&mut hash, file.path.as_bytes());
                match file.encoding {
                    ContentEncoding::Utf8 => field(&mut hash, file.content.as_bytes()),
                    ContentEncoding::Base64 => field(
                        &mut hash,
                        &base64::engine::general_purpose::STANDARD
                            .decode(file.content.as_bytes())
                            .unwrap_or_default(),
                    ),
                }
            }
        }
        Source::S3 { bucket, key } => {
            field(&mut hash, b"s3");
            field(&mut hash, bucket.as_bytes());
            field(&mut hash, key.as_bytes());
        }
        Source::Git { url, reference } => {
            field(&mut hash, b"git");
            field(&mut hash, url.as_bytes());
            field(&mut hash, reference.as_bytes());
        }
        // The bytes are pinned by their hash: the same archive from any URL is the same source.
        Source::Archive { sha256, .. } => {
            field(&mut hash, b"archive");
            field(&mut hash, sha256.as_bytes());
        }
    }
    ContentDigest::from_sha256(hash)
}

fn field(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}
