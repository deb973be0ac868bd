//! Upgraded connections (after a `101 Switching Protocols`): client and backend spliced together
//! until either side closes or the backend leaves.
//!
//! Unknown protocols are spliced byte for byte and simply closed when a drain deadline cuts the
//! backend. WebSockets get a frame-aware splice instead: when the backend starts draining
//! (`BackendState::going_away`), the proxy ends the conversation the way a server shutting down
//! would, with a Close frame "1001 Going Away" to the client and a masked one to the backend,
//! each written at a frame boundary so no frame is ever split, then gives the peers a short
//! while to answer before closing both sockets. Browsers and WebSocket libraries treat 1001 as
//! a cue to reconnect, which lands them on the new instance, instead of seeing a reset at the
//! drain deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::backend::{InFlightGuard, Signal};
use crate::metrics::RouteMetrics;
use crate::ws_frame::{close_frame, FrameTracker, GOING_AWAY, OPCODE_CLOSE};

/// Longest wait for both peers to answer the Close frames (a drain deadline may cut sooner).
const CLOSE_HANDSHAKE_GRACE: Duration = Duration::from_secs(5);

/// Reason sent with the 1001 Close frames, shown by some clients in their logs.
const GOING_AWAY_REASON: &str = "app instance is draining";

/// Bytes read at a time in each direction (the same as `tokio::io::copy_bidirectional`).
const BUFFER_SIZE: usize = 8 * 1024;

/// How the bytes of a tunnel are understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// RFC 6455 frames: the tunnel can be closed gracefully when the backend goes away.
    WebSocket,
    /// Anything else: opaque bytes, closed only when a drain deadline cuts the backend.
    Opaque,
}

impl Protocol {
    /// The protocol a 101 response switched to, from its `Upgrade` header.
    pub(crate) fn switched_to(upgrade: Option<&HeaderValue>) -> Self {
        let websocket = upgrade
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if websocket {
            Protocol::WebSocket
        } else {
            Protocol::Opaque
        }
    }
}

/// Splice client and backend after a 101 on a task of its own. The tunnel counts as in flight
/// against the backend (so drains wait for it) until it ends.
pub(crate) fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    protocol: Protocol,
    in_flight: InFlightGuard,
    metrics: Arc<RouteMetrics>,
) {
    tokio::spawn(async move {
        metrics.add_open(1);
        let backend = in_flight.backend();
        let cut = backend.cut.clone();
        let going_away = backend.going_away.clone();
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let copied = match protocol {
                    Protocol::Opaque => until_cut(
                        tokio::io::copy_bidirectional(&mut client, &mut upstream),
                        &cut,
                    )
                    .await
                    .and_then(Result::ok),
                    Protocol::WebSocket => {
                        // Once the backend goes away the peers get a while to answer the Close
                        // frames; the signal is watched without re-polling a future per wake-up.
                        let splice = splice_websocket(client, upstream, &going_away);
                        let mut leaving = going_away.watch();
                        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
                        tokio::pin!(splice);
                        let spliced = std::future::poll_fn(|cx| {
                            if let Poll::Ready(copied) = splice.as_mut().poll(cx) {
                                return Poll::Ready(copied.ok());
                            }
                            if grace.is_none() && leaving.poll_fired(cx) {
                                grace = Some(Box::pin(tokio::time::sleep(CLOSE_HANDSHAKE_GRACE)));
                            }
                            let over = grace
                                .as_mut()
                                .is_some_and(|grace| grace.as_mut().poll(cx).is_ready());
                            if over {
                                Poll::Ready(None)
                            } else {
                                Poll::Pending
                            }
                        });
                        until_cut(spliced, &cut).await.flatten()
                    }
                };
                if let Some((to_upstream, to_client)) = copied {
                    metrics.add_bytes_in(to_upstream);
                    metrics.add_bytes_out(to_client);
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        metrics.add_open(-1);
        drop(in_flight);
    });
}

/// Run `fut` unless `cut` fires first (the signal is checked cheaply on every wake-up).
async fn until_cut<F: Future>(fut: F, cut: &Signal) -> Option<F::Output> {
    let mut cut = cut.watch();
    tokio::pin!(fut);
    std::future::poll_fn(|cx| {
        if cut.poll_fired(cx) {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Copy WebSocket frames both ways until both sides are done; once `going_away` fires, close
/// both sides with 1001 and finish when each peer has answered with its own Close (or hung up).
///
/// Returns the bytes forwarded client → backend and backend → client. The caller bounds how
/// long the closing handshake may take.
pub(crate) async fn splice_websocket<C, U>(
    client: C,
    upstream: U,
    going_away: &Signal,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let to_upstream = FramePump {
        src: client_read,
        dst: upstream_write,
        // The proxy speaks as a client to the backend, so its Close frame must be masked.
        mask_close: true,
    };
    let to_client = FramePump {
        src: upstream_read,
        dst: client_write,
        mask_close: false,
    };
    tokio::try_join!(to_upstream.run(going_away), to_client.run(going_away))
}

/// One direction of a WebSocket tunnel.
struct FramePump<R, W> {
    src: R,
    dst: W,
    /// Whether the Close frame written to `dst` when the backend goes away must be masked.
    mask_close: bool,
}

/// Where one direction stands in the closing handshake.
#[derive(Debug, Default)]
struct CloseState {
    /// `dst` has been sent a Close frame: forwarded from `src`, or injected by the proxy.
    dst_told: bool,
    /// The proxy injected its own Close: nothing more may follow it, so later frames from
    /// `src` are dropped.
    injected: bool,
    /// `src` sent a Close frame (its last frame) or hung up.
    src_done: bool,
}

impl<R: AsyncRead, W: AsyncWrite> FramePump<R, W> {
    /// Forward frames from `src` to `dst` unchanged; returns the bytes forwarded.
    ///
    /// Without a drain this ends when `src` hangs up (and `dst` is then shut down, as
    /// `copy_bidirectional` does). Once `going_away` fires, a Close frame goes to `dst` at the
    /// next frame boundary (unless `src` already sent one), and the pump ends as soon as `src`
    /// has sent its own Close frame.
    async fn run(self, going_away: &Signal) -> io::Result<u64> {
        let FramePump {
            src,
            dst,
            mask_close,
        } = self;
        // Built only when needed: most tunnels never see their backend go away.
        let going_away_frame =
            || close_frame(GOING_AWAY, GOING_AWAY_REASON, mask_close.then(rand::random));
        tokio::pin!(src);
        tokio::pin!(dst);
        let mut frames = FrameTracker::default();
        let mut close = CloseState::default();
        let mut forwarded = 0u64;
        let mut buf = vec![0u8; BUFFER_SIZE];
        let mut watch = going_away.watch();
        loop {
            let leaving = going_away.is_fired();
            if leaving {
                if !close.dst_told && frames.at_boundary() {
                    dst.write_all(&going_away_frame()).await?;
                    dst.flush().await?;
                    close.dst_told = true;
                    close.injected = true;
                }
                if close.dst_told && close.src_done {
                    break;
                }
            }
            let read = if leaving {
                src.read(&mut buf).await?
            } else {
                let mut read_buf = ReadBuf::new(&mut buf);
                let read = std::future::poll_fn(|cx| {
                    if watch.poll_fired(cx) {
                        return Poll::Ready(None);
                    }
                    src.as_mut().poll_read(cx, &mut read_buf).map(Some)
                })
                .await;
                match read {
                    // The backend started draining: go round to close at a frame boundary.
                    None => continue,
                    Some(result) => {
                        result?;
                        read_buf.filled().len()
                    }
                }
            };
            if read == 0 {
                // `src` hung up: nothing more to forward or to wait for in this direction.
                break;
            }
            let chunk = &buf[..read];
            // Walk the chunk frame by frame; bytes in `chunk[unsent..offset]` still have to go.
            let (mut offset, mut unsent) = (0, 0);
            while offset < chunk.len() {
                let step = frames.advance(&chunk[offset..]);
                offset += step.consumed;
                if close.injected {
                    // After our Close, only the peer's answer matters; its frames are dropped.
                    unsent = offset;
                }
                if step.completed_opcode == Some(OPCODE_CLOSE) {
                    close.src_done = true;
                    close.dst_told = true;
                } else if step.completed_opcode.is_some() && leaving && !close.dst_told {
                    // The frame in flight when the drain began is complete: close right after.
                    dst.write_all(&chunk[unsent..offset]).await?;
                    forwarded += (offset - unsent) as u64;
                    dst.write_all(&going_away_frame()).await?;
                    unsent = offset;
                    close.dst_told = true;
                    close.injected = true;
                }
            }
            if unsent < chunk.len() {
                dst.write_all(&chunk[unsent..]).await?;
                forwarded += (chunk.len() - unsent) as u64;
            }
            dst.flush().await?;
            if leaving && close.dst_told && close.src_done {
                break;
            }
        }
        // Half-close toward `dst`; a peer that is already gone is no reason to fail the tunnel.
        let _ = dst.shutdown().await;
        Ok(forwarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    const TEXT: u8 = 0x1;

    /// Frame with a payload of `len` copies of `fill`; masked if `mask` is given.
    fn frame(opcode: u8, len: usize, fill: u8, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(bit | len as u8),
            126..=0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        out.extend(std::iter::repeat_n(fill, len));
        out
    }

    /// A tunnel over in-memory pipes: (client end, backend end, going-away token, splice task).
    struct Harness {
        client: DuplexStream,
        upstream: DuplexStream,
        going_away: Signal,
        splice: tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    }

    fn harness() -> Harness {
        let (client, proxy_client_side) = duplex(64 * 1024);
        let (upstream, proxy_upstream_side) = duplex(64 * 1024);
        let going_away = Signal::default();
        let token = going_away.clone();
        let splice = tokio::spawn(async move {
            splice_websocket(proxy_client_side, proxy_upstream_side, &token).await
        });
        Harness {
            client,
            upstream,
            going_away,
            splice,
        }
    }

    async fn read_exact(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut out))
            .await
            .expect("timed out reading")
            .expect("read failed");
        out
    }

    /// Read a Close frame and return (masked, status code).
    async fn read_close(stream: &mut DuplexStream) -> (bool, u16) {
        let head = read_exact(stream, 2).await;
        assert_eq!(head[0], 0x88, "expected a final Close frame");
        let masked = head[1] & 0x80 != 0;
        let len = usize::from(head[1] & 0x7f);
        let key = if masked {
            let k = read_exact(stream, 4).await;
            [k[0], k[1], k[2], k[3]]
        } else {
            [0; 4]
        };
        let payload: Vec<u8> = read_exact(stream, len)
            .await
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        (masked, u16::from_be_bytes([payload[0], payload[1]]))
    }

    #[tokio::test]
    async fn forwards_frames_unchanged_both_ways() {
        let mut h = harness();
        let to_upstream = frame(TEXT, 300, b'a', Some([1, 2, 3, 4]));
        let to_client = frame(TEXT, 70_000, b'b', None);
        h.client.write_all(&to_upstream).await.unwrap();
        assert_eq!(
            read_exact(&mut h.upstream, to_upstream.len()).await,
            to_upstream
        );
        h.upstream.write_all(&to_client).await.unwrap();
        assert_eq!(read_exact(&mut h.client, to_client.len()).await, to_client);
        drop(h.client);
        drop(h.upstream);
        let (up, down) = h.splice.await.unwrap().unwrap();
        assert_eq!(
            (up, down),
            (to_upstream.len() as u64, to_client.len() as u64)
        );
    }

    #[tokio::test]
    async fn going_away_closes_both_sides_at_once_when_idle() {
        let mut h = harness();
        h.going_away.fire();
        assert_eq!(read_close(&mut h.client).await, (false, GOING_AWAY));
        assert_eq!(read_close(&mut h.upstream).await, (true, GOING_AWAY));
        // Both peers answer; the splice then ends on its own.
        h.client
            .write_all(&close_frame(GOING_AWAY, "", Some([7, 7, 7, 7])))
            .await
            .unwrap();
        h.upstream
            .write_all(&close_frame(GOING_AWAY, "", None))
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), h.splice).await;
        assert!(ended.expect("splice did not end").unwrap().is_ok());
        // Each socket sees end-of-stream after the Close (the answers are not forwarded).
        let mut rest = Vec::new();
        h.client.read_to_end(&mut rest).await.unwrap();
        h.upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn frame_in_flight_finishes_before_the_close() {
        let mut h = harness();
        let big = frame(0x2, 200 * 1024, b'z', None);
        let (first, second) = big.split_at(100 * 1024 + 3);
        h.upstream.write_all(first).await.unwrap();
        assert_eq!(read_exact(&mut h.client, first.len()).await, first);
        h.going_away.fire();
        // The backend side is at a boundary, so it hears the Close at once...
        assert_eq!(read_close(&mut h.upstream).await, (true, GOING_AWAY));
        // ...while the client first gets the rest of the frame, then the Close.
        h.upstream.write_all(second).await.unwrap();
        assert_eq!(read_exact(&mut h.client, second.len()).await, second);
        assert_eq!(read_close(&mut h.client).await, (false, GOING_AWAY));
    }

    #[tokio::test]
    async fn frames_after_the_injected_close_are_dropped() {
        let mut h = harness();
        h.going_away.fire();
        assert_eq!(read_close(&mut h.client).await, (false, GOING_AWAY));
        // A message the backend sent before it saw our Close must not follow it to the client.
        h.upstream
            .write_all(&frame(TEXT, 5, b'x', None))
            .await
            .unwrap();
        h.upstream
            .write_all(&close_frame(GOING_AWAY, "", None))
            .await
            .unwrap();
        drop(h.upstream);
        // The splice may already have ended (the backend hung up), so this answer can fail.
        let _ = h
            .client
            .write_all(&close_frame(GOING_AWAY, "", Some([1, 1, 1, 1])))
            .await;
        let mut rest = Vec::new();
        h.client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "got {} bytes after the Close", rest.len());
    }

    #[tokio::test]
    async fn a_close_already_sent_by_a_peer_is_not_doubled() {
        let mut h = harness();
        // The client starts a normal close; the backend has not answered yet when draining starts.
        let client_close = close_frame(1000, "bye", Some([3, 3, 3, 3]));
        h.client.write_all(&client_close).await.unwrap();
        assert_eq!(
            read_exact(&mut h.upstream, client_close.len()).await,
            client_close
        );
        h.going_away.fire();
        // The client is told 1001; the backend, which already has a Close, gets nothing more.
        assert_eq!(read_close(&mut h.client).await, (false, GOING_AWAY));
        h.upstream
            .write_all(&close_frame(1000, "", None))
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), h.splice).await;
        assert!(ended.expect("splice did not end").unwrap().is_ok());
        let mut rest = Vec::new();
        h.upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn only_websocket_upgrades_are_framed() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            Protocol::switched_to(Some(&v("websocket"))),
            Protocol::WebSocket
        );
        assert_eq!(
            Protocol::switched_to(Some(&v("WebSocket"))),
            Protocol::WebSocket
        );
        assert_eq!(Protocol::switched_to(Some(&v("h2c"))), Protocol::Opaque);
        assert_eq!(Protocol::switched_to(None), Protocol::Opaque);
    }
}
