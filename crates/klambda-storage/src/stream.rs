//! Streaming an object produced by synchronous code (tar + gzip on a blocking thread) into a
//! store: the writer sends fixed-size chunks through a bounded channel, so the producer runs at
//! most `capacity` chunks ahead of the upload and memory stays bounded whatever the object's size.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// The receiving side: chunks in order, an `Err` if the producer failed, and a final empty
/// chunk that marks a finished object.
pub type Chunks = mpsc::Receiver<io::Result<Bytes>>;

/// The size of the chunks a [`ChunkWriter`] sends.
pub const CHUNK: usize = 256 * 1024;

/// A writer whose bytes go to a store as chunks. Use it from a blocking thread
/// (`tokio::task::spawn_blocking`); a dropped receiver makes writes fail with `BrokenPipe`.
pub struct ChunkWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
}

/// A writer and the chunks it sends, at most `capacity` chunks in flight.
pub fn chunk_channel(capacity: usize) -> (ChunkWriter, Chunks) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (
        ChunkWriter {
            sender,
            buffer: BytesMut::with_capacity(CHUNK),
        },
        receiver,
    )
}

impl ChunkWriter {
    fn send(&mut self, chunk: io::Result<Bytes>) -> io::Result<()> {
        self.sender.blocking_send(chunk).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the store stopped receiving the object",
            )
        })
    }

    /// Sends what is buffered and marks the object complete.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = self.buffer.split().freeze();
            self.send(Ok(chunk))?;
        }
        self.send(Ok(Bytes::new()))
    }

    /// Abandons the object: the store stores nothing and reports `error`.
    pub fn fail(mut self, error: io::Error) {
        let _ = self.send(Err(error));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            let chunk = self.buffer.split().freeze();
            self.send(Ok(chunk))?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the next chunk: `Ok(Some)` data, `Ok(None)` the object is complete, `Err` it is not
/// (the producer failed, or stopped without finishing).
pub(crate) async fn next(chunks: &mut Chunks) -> io::Result<Option<Bytes>> {
    match chunks.recv().await {
        Some(Ok(chunk)) if chunk.is_empty() => Ok(None),
        Some(Ok(chunk)) => Ok(Some(chunk)),
        Some(Err(error)) => Err(error),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the producer stopped before finishing the object",
        )),
    }
}
