//! A stream with a few bytes already read from it put back in front: protocol detection on
//! the plain listener reads the start of a connection (to tell the HTTP/2 preface from an
//! HTTP/1 request line), then hands everything to hyper as if nothing had been read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: [u8; 24],
    start: u8,
    end: u8,
    inner: T,
}

impl<T: AsyncRead + Unpin> Prefixed<T> {
    /// Read until the first bytes are known to be, or not to be, the HTTP/2 preface.
    /// Returns the stream with those bytes put back, and whether it was the preface.
    pub async fn detect_h2(mut inner: T) -> io::Result<(Prefixed<T>, bool)> {
        use tokio::io::AsyncReadExt;
        let mut prefix = [0u8; 24];
        let mut n = 0;
        while n < prefix.len() && prefix[..n] == H2_PREFACE[..n] {
            let got = inner.read(&mut prefix[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
        }
        let h2 = n == prefix.len() && &prefix == H2_PREFACE;
        Ok((
            Prefixed {
                prefix,
                start: 0,
                end: n as u8,
                inner,
            },
            h2,
        ))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let pending = &this.prefix[this.start as usize..this.end as usize];
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            this.start += n as u8;
            // Fill the rest of the reader's buffer too, when the socket has more: hyper
            // then sees the request head in one read, as it would without detection (two
            // reads made its adaptive buffer grow to twice its size, for every connection).
            if this.start == this.end && buf.remaining() > 0 {
                // Pending or an error here is reported by the next read.
                let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

super::deadline::delegate_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_what_it_read() {
        for (input, h2) in [
            (&b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..], false),
            (&H2_PREFACE[..], true),
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"[..], true),
            (&b"PRX"[..], false),
            (&b""[..], false),
        ] {
            let (mut p, is_h2) = Prefixed::detect_h2(input).await.unwrap();
            assert_eq!(is_h2, h2);
            let mut all = Vec::new();
            p.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, input);
        }
    }
}
