//! The request-response codec: a 4-byte big-endian length, then the body,
//! bounded by [`MAX_RR_BYTES`] and read as it arrives.

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use super::MAX_RR_BYTES;

/// A length-prefixed byte codec with a size bound, for request-response.
#[derive(Debug, Clone, Default)]
pub struct BytesCodec;

async fn read_bounded<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RR_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_RR_BYTES}"),
        ));
    }
    // Grow with what arrives, not with what the sender claims: a peer that
    // announces 8 MiB and sends nothing costs us nothing.
    let mut buf = Vec::new();
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("message ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

async fn write_bounded<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: Vec<u8>,
) -> std::io::Result<()> {
    if data.len() > MAX_RR_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_RR_BYTES}", data.len()),
        ));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_bounded(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_bounded(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_bounded(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_bounded(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn framed(len: u32, body: &[u8]) -> Cursor<Vec<u8>> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        Cursor::new(v)
    }

    #[tokio::test]
    async fn a_request_is_read_up_to_its_length_and_no_further() {
        let got = read_bounded(&mut framed(3, b"abcdef")).await.unwrap();
        assert_eq!(got, b"abc");
    }

    #[tokio::test]
    async fn a_claimed_length_that_never_arrives_is_an_error_not_an_allocation() {
        // Announces the bound, sends 5 bytes: an error, and the buffer only
        // ever held what came.
        let e = read_bounded(&mut framed(MAX_RR_BYTES as u32, b"hello"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("after 5 of"), "{e}");
    }

    #[tokio::test]
    async fn a_length_past_the_bound_is_refused_before_reading() {
        let e = read_bounded(&mut framed(MAX_RR_BYTES as u32 + 1, b""))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
