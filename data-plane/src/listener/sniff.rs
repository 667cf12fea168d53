//! Which protocol a connection speaks: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when it
//! opens with the HTTP/2 connection preface. The first read takes whatever the client has sent
//! (usually its whole first request) into the buffer the HTTP/1.1 server goes on with, and
//! [`Replay`] hands those bytes to hyper's HTTP/2 connection before anything else, so a
//! connection costs one read to sniff and none to re-read. (hyper-util's auto builder read the
//! first 24 bytes alone: one more system call per connection, which a connection per request
//! pays per request.)

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
#[cfg(test)]
use hyper::rt::ReadBuf;
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes the first read takes.
const FIRST_READ: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
}

/// What a [`Replay`] does when the HTTP connection over it is done and shuts its write side down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Shuts the write side down (TLS: its `close_notify`, then the TCP shutdown).
    Shutdown,
    /// Nothing: the connection is dropped, hence closed, right after, and the close sends the
    /// same FIN. A plain connection per request saves a system call. Not for anything that
    /// half-closes on purpose (a tunnel after an upgrade; none is proxied).
    Close,
}

/// Reads the start of the connection into `buf` and tells its protocol; `None` when the client
/// closed before sending a byte. The bytes read stay in `buf`: the HTTP/1.1 server parses them
/// where they are, and h2c gets them back through a [`Replay`].
pub async fn sniff<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> io::Result<Option<Protocol>> {
    buf.reserve(FIRST_READ);
    loop {
        let before = buf.len();
        if reader.read_buf(buf).await? == 0 {
            if before == 0 {
                return Ok(None);
            }
            // Ended inside what could have been a preface: HTTP/1.1 will say it is malformed.
            return Ok(Some(Protocol::Http1));
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok(Some(Protocol::Http1));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Some(Protocol::H2c));
        }
    }
}

#[cfg(test)]
async fn read<I: Read + Unpin>(io: &mut I, into: &mut [u8]) -> io::Result<usize> {
    let mut buf = ReadBuf::new(into);
    std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, buf.unfilled())).await?;
    Ok(buf.filled().len())
}

/// An I/O whose first reads return bytes read from it before.
pub struct Replay<I> {
    prefix: Bytes,
    io: I,
    ending: Ending,
}

impl<I> Replay<I> {
    pub fn new(prefix: Bytes, io: I, ending: Ending) -> Self {
        Self { prefix, io, ending }
    }
}

impl<I: Read + Unpin> Read for Replay<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: Write + Unpin> Write for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.ending {
            Ending::Shutdown => Pin::new(&mut self.io).poll_shutdown(cx),
            Ending::Close => Poll::Ready(Ok(())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Sends `parts` one write at a time (each after the previous was read), then closes; returns
    /// what `sniff` made of it and everything read back through the replay.
    async fn sniffed(parts: &[&'static [u8]]) -> Option<(Protocol, Vec<u8>)> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let parts = parts.to_vec();
        let writer = tokio::spawn(async move {
            let mut client = client;
            for part in parts {
                client.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client.shutdown().await.unwrap();
            // Keep the client end open until the server side has read everything.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let mut server = server;
        let mut buf = BytesMut::new();
        let protocol = sniff(&mut server, &mut buf).await.unwrap()?;
        let mut replay = Replay::new(buf.freeze(), TokioIo::new(server), Ending::Shutdown);
        let mut all = Vec::new();
        loop {
            let mut chunk = [0u8; 7];
            let n = read(&mut replay, &mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        Some((protocol, all))
    }

    #[tokio::test]
    async fn the_preface_means_h2c_even_split_across_reads() {
        let (protocol, all) = sniffed(&[b"PRI * HTTP/2", b".0\r\n\r\nSM\r\n\r\n", b"frames"])
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::H2c);
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nframes");
    }

    #[tokio::test]
    async fn anything_else_is_http1_and_nothing_is_lost() {
        let request: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        for parts in [
            vec![request],
            vec![&b"PR"[..], &b"OPFIND / HTTP/1.1\r\n\r\n"[..]],
            vec![&b"PRI * HTTP/1.1\r\n"[..]],
            // Closed inside a would-be preface.
            vec![&b"PRI * HT"[..]],
        ] {
            let (protocol, all) = sniffed(&parts).await.unwrap();
            assert_eq!(protocol, Protocol::Http1, "{parts:?}");
            assert_eq!(all, parts.concat());
        }
    }

    #[tokio::test]
    async fn a_connection_closed_at_once_is_nothing() {
        assert!(sniffed(&[]).await.is_none());
    }
}
