//! Framing on a link stream. Each uni stream starts with a header (kind byte, then for data
//! streams the stream index), followed by frames: `u32 body length` (big-endian), then the
//! body, a batch of messages each `u32 length` + bytes. A frame longer than the cap is a
//! protocol violation; buffers grow with the bytes that actually arrive, never up front
//! from a length the peer claims.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Stream kind: the dialer's hello (`u32` node id).
pub(crate) const KIND_HELLO: u8 = 0;
/// Stream kind: data (`u16` stream index, then frames).
pub(crate) const KIND_DATA: u8 = 1;

/// Bytes of framing per message inside a frame.
pub(crate) const MSG_OVERHEAD: usize = 4;

/// Append one frame holding `msgs` to `out`.
pub(crate) fn encode_frame<'a>(msgs: impl Iterator<Item = &'a Bytes>, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    for m in msgs {
        out.put_u32(m.len() as u32);
        out.extend_from_slice(m);
    }
    let body = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&body.to_be_bytes());
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {0} bytes exceeds the cap")]
    TooLong(usize),
    #[error("malformed frame")]
    Malformed,
    #[error("stream ended mid-frame")]
    Truncated,
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Read the next frame; `Ok(None)` at a clean end of stream (between frames).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<Bytes>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLong(len));
    }
    let mut body = BytesMut::with_capacity(len.min(64 * 1024));
    while body.len() < len {
        let want = len - body.len();
        if body.capacity() == body.len() {
            body.reserve(want.min(64 * 1024));
        }
        let mut limited = (&mut *r).take(want as u64);
        if limited.read_buf(&mut body).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    decode_body(body.freeze()).map(Some)
}

/// Split a frame body into its messages (zero-copy slices of it).
pub(crate) fn decode_body(mut body: Bytes) -> Result<Vec<Bytes>, FrameError> {
    let mut msgs = Vec::new();
    while body.has_remaining() {
        if body.len() < 4 {
            return Err(FrameError::Malformed);
        }
        let n = body.get_u32() as usize;
        if n > body.len() {
            return Err(FrameError::Malformed);
        }
        msgs.push(body.split_to(n));
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_even_one_byte_at_a_time() {
        let msgs = [
            Bytes::from_static(b"hello"),
            Bytes::new(),
            Bytes::from(vec![7u8; 300]),
        ];
        let mut buf = BytesMut::new();
        encode_frame(msgs.iter(), &mut buf);
        encode_frame(msgs[..1].iter(), &mut buf);
        let bytes = buf.freeze();
        // A reader that yields one byte per read.
        let (mut tx, mut rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in bytes.iter() {
                tx.write_all(&[*b]).await.unwrap();
            }
        });
        assert_eq!(read_frame(&mut rx, 1024).await.unwrap().unwrap(), msgs);
        assert_eq!(read_frame(&mut rx, 1024).await.unwrap().unwrap(), msgs[..1]);
        writer.await.unwrap();
        assert!(read_frame(&mut rx, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn malformed_and_oversized_frames_are_refused() {
        let mut too_long: &[u8] = &[0, 0, 4, 1, 0];
        assert!(matches!(
            read_frame(&mut too_long, 1024).await,
            Err(FrameError::TooLong(1025))
        ));
        // A message claiming more bytes than the frame holds.
        let mut bad: &[u8] = &[0, 0, 0, 5, 0, 0, 0, 9, 1];
        assert!(matches!(
            read_frame(&mut bad, 1024).await,
            Err(FrameError::Malformed)
        ));
        // A stream cut mid-frame.
        let mut cut: &[u8] = &[0, 0, 0, 8, 0, 0];
        assert!(matches!(
            read_frame(&mut cut, 1024).await,
            Err(FrameError::Truncated)
        ));
        // A huge claimed length under the cap allocates only what arrives.
        let mut short: &[u8] = &[0, 0x40, 0, 0, 1, 2];
        assert!(matches!(
            read_frame(&mut short, 1 << 24).await,
            Err(FrameError::Truncated)
        ));
    }
}
