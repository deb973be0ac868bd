//! WebSocket frame boundaries on a raw byte stream (RFC 6455 §5.2), and the Close frames the
//! proxy injects when a backend goes away.
//!
//! The proxy forwards WebSocket bytes unchanged; it only needs to know *where* frames end so
//! that a Close frame it adds never lands inside another frame. [`FrameTracker`] therefore keeps
//! at most one frame header (≤ 14 bytes) and otherwise just counts payload bytes: no message is
//! buffered, unmasked or validated (that stays the endpoints' job).

/// Opcode of a Close control frame (RFC 6455 §5.5.1).
pub(crate) const OPCODE_CLOSE: u8 = 0x8;

/// Status code 1001 "Going Away": the endpoint is leaving (RFC 6455 §7.4.1).
pub(crate) const GOING_AWAY: u16 = 1001;

/// Longest frame header: 2 fixed bytes, a 64-bit extended length and a 4-byte mask key.
const MAX_HEADER_LEN: usize = 14;

/// Longest Close reason: a control frame payload is at most 125 bytes, 2 of them the code.
const MAX_CLOSE_REASON_LEN: usize = 123;

/// What one call to [`FrameTracker::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advance {
    /// Bytes of the input that belong to the frame in progress (all of them if it did not end).
    pub(crate) consumed: usize,
    /// Opcode of the frame that ended exactly after `consumed` bytes, if one did.
    pub(crate) completed_opcode: Option<u8>,
}

/// Follows frame boundaries in one direction of a WebSocket byte stream, chunk by chunk.
///
/// Any byte sequence is a sequence of frame headers and payloads, so tracking never fails; a
/// peer sending garbage only gets boundaries that are as wrong as its frames.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// Header bytes received so far for the frame being started.
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    /// Payload bytes still to come for the frame in progress (meaningful when `in_payload`).
    payload_left: u64,
    in_payload: bool,
    opcode: u8,
}

impl FrameTracker {
    /// True between frames: a frame the proxy writes now cannot split one from the peer.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.in_payload && self.header_len == 0
    }

    /// Consume `data` up to the end of the first frame that ends in it (or all of it).
    ///
    /// Call again with the rest of the chunk to find the next boundary; an empty `data` consumes
    /// nothing and completes nothing.
    pub(crate) fn advance(&mut self, data: &[u8]) -> Advance {
        let mut consumed = 0;
        loop {
            if !self.in_payload {
                // Take header bytes one stage at a time: the first 2 bytes tell how long the
                // rest of the header is.
                let needed = self.header_needed();
                let take = (needed - self.header_len).min(data.len() - consumed);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&data[consumed..consumed + take]);
                self.header_len += take;
                consumed += take;
                if self.header_len < needed {
                    return Advance {
                        consumed,
                        completed_opcode: None,
                    };
                }
                if self.header_needed() > self.header_len {
                    continue;
                }
                self.start_payload();
            }
            let available = (data.len() - consumed) as u64;
            let take = self.payload_left.min(available);
            self.payload_left -= take;
            // `take` is at most `data.len() - consumed`, so it fits in usize.
            consumed += take as usize;
            if self.payload_left > 0 {
                return Advance {
                    consumed,
                    completed_opcode: None,
                };
            }
            self.in_payload = false;
            return Advance {
                consumed,
                completed_opcode: Some(self.opcode),
            };
        }
    }

    /// Header length implied by the bytes seen so far (2 until the length byte is known).
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let masked = self.header[1] & 0x80 != 0;
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if masked { 4 } else { 0 }
    }

    /// The header is complete: decode opcode and payload length, then expect the payload.
    fn start_payload(&mut self) {
        self.opcode = self.header[0] & 0x0f;
        self.payload_left = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            short => u64::from(short),
        };
        self.header_len = 0;
        self.in_payload = true;
    }
}

/// A complete, final Close frame carrying `code` and `reason` (truncated to fit a control frame).
///
/// Frames a client sends must be masked (RFC 6455 §5.3), so the frame meant for the upstream
/// passes a `mask` key; the frame meant for the client passes `None`.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);

    let mut frame = Vec::with_capacity(2 + 4 + payload.len());
    frame.push(0x80 | OPCODE_CLOSE);
    // At most 125 bytes, so the 7-bit length always suffices.
    let len = payload.len() as u8;
    match mask {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONTINUATION: u8 = 0x0;
    const PING: u8 = 0x9;

    /// A frame as a peer would send it, with a payload of `len` bytes of `fill`.
    fn frame(fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        out.extend((0..len).map(|i| (i % 251) as u8));
        out
    }

    /// Feed `stream` in `chunk`-sized reads; list (offset in stream, opcode) of each frame end.
    fn boundaries(stream: &[u8], chunk: usize) -> Vec<(usize, u8)> {
        let mut tracker = FrameTracker::default();
        let mut ends = Vec::new();
        let mut pos = 0;
        for piece in stream.chunks(chunk) {
            let mut offset = 0;
            loop {
                let step = tracker.advance(&piece[offset..]);
                offset += step.consumed;
                if let Some(opcode) = step.completed_opcode {
                    ends.push((pos + offset, opcode));
                    assert!(tracker.at_boundary());
                }
                if offset == piece.len() {
                    break;
                }
                assert!(
                    step.completed_opcode.is_some(),
                    "stopped early without a frame end"
                );
            }
            pos += piece.len();
        }
        ends
    }

    fn check(frames: &[Vec<u8>], chunk: usize) {
        let stream: Vec<u8> = frames.concat();
        let mut expected = Vec::new();
        let mut end = 0;
        for f in frames {
            end += f.len();
            expected.push((end, f[0] & 0x0f));
        }
        assert_eq!(boundaries(&stream, chunk), expected, "chunk size {chunk}");
    }

    #[test]
    fn finds_frame_ends_whatever_the_read_sizes() {
        let frames = vec![
            frame(true, TEXT, 5, None),
            frame(true, PING, 0, None),
            frame(true, BINARY, 125, Some([1, 2, 3, 4])),
            frame(true, TEXT, 0, Some([9, 9, 9, 9])),
        ];
        for chunk in [1, 2, 3, 7, 13, 64, 4096] {
            check(&frames, chunk);
        }
    }

    #[test]
    fn headers_split_across_reads_are_reassembled() {
        // 1-byte reads split every header, including the extended lengths and the mask key.
        let frames = vec![
            frame(true, BINARY, 300, Some([0xde, 0xad, 0xbe, 0xef])),
            frame(true, BINARY, 70_000, None),
            frame(true, TEXT, 1, Some([1, 1, 1, 1])),
        ];
        check(&frames, 1);
        check(&frames, 3);
    }

    #[test]
    fn sixteen_bit_lengths() {
        for len in [126, 127, 1000, 0xffff] {
            for mask in [None, Some([5, 6, 7, 8])] {
                let frames = vec![frame(true, TEXT, len, mask), frame(true, PING, 3, mask)];
                check(&frames, 4096);
                check(&frames, 5);
            }
        }
    }

    #[test]
    fn sixty_four_bit_lengths() {
        for len in [0x1_0000, 200 * 1024] {
            for mask in [None, Some([5, 6, 7, 8])] {
                let frames = vec![frame(true, BINARY, len, mask), frame(true, TEXT, 2, mask)];
                check(&frames, 8192);
                check(&frames, 9);
            }
        }
        // A length no real stream reaches is still just counted, never allocated.
        let mut tracker = FrameTracker::default();
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
        let step = tracker.advance(&header);
        assert_eq!(step.consumed, header.len());
        assert_eq!(step.completed_opcode, None);
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.advance(&[0; 1000]).consumed, 1000);
        assert!(!tracker.at_boundary());
    }

    #[test]
    fn fragmented_messages_have_a_boundary_after_every_fragment() {
        // Control frames may sit between the fragments of a message (RFC 6455 §5.4), so every
        // fragment end is a place where a Close frame can be injected.
        let frames = vec![
            frame(false, TEXT, 10, None),
            frame(true, PING, 2, None),
            frame(false, CONTINUATION, 10, None),
            frame(true, CONTINUATION, 10, None),
        ];
        check(&frames, 6);
    }

    #[test]
    fn boundary_only_between_frames() {
        let stream = [frame(true, TEXT, 10, None), frame(true, TEXT, 10, None)].concat();
        let mut tracker = FrameTracker::default();
        assert!(tracker.at_boundary());
        // Half a header, then the rest of the header, then half the payload: never a boundary.
        for piece in [&stream[..1], &stream[1..2], &stream[2..7]] {
            let step = tracker.advance(piece);
            assert_eq!((step.consumed, step.completed_opcode), (piece.len(), None));
            assert!(!tracker.at_boundary());
        }
        // The rest of the first frame plus the start of the second: stops at the frame end.
        let step = tracker.advance(&stream[7..15]);
        assert_eq!(step.consumed, 5);
        assert_eq!(step.completed_opcode, Some(TEXT));
        assert!(tracker.at_boundary());
        let step = tracker.advance(&stream[12..15]);
        assert_eq!((step.consumed, step.completed_opcode), (3, None));
        assert!(!tracker.at_boundary());
        assert_eq!(tracker.advance(&[]).consumed, 0);
    }

    #[test]
    fn close_frames_are_recognised() {
        let stream = [
            frame(true, TEXT, 3, None),
            close_frame(1000, "bye", None),
            close_frame(GOING_AWAY, "", Some([1, 2, 3, 4])),
        ]
        .concat();
        let ends: Vec<u8> = boundaries(&stream, 2).into_iter().map(|e| e.1).collect();
        assert_eq!(ends, vec![TEXT, OPCODE_CLOSE, OPCODE_CLOSE]);
    }

    #[test]
    fn close_frame_toward_the_client_is_unmasked() {
        let frame = close_frame(GOING_AWAY, "draining", None);
        assert_eq!(frame[0], 0x88, "FIN + Close");
        assert_eq!(frame[1], 10, "unmasked, 2-byte code + 8-byte reason");
        assert_eq!(&frame[2..4], &1001u16.to_be_bytes());
        assert_eq!(&frame[4..], b"draining");
    }

    #[test]
    fn close_frame_toward_the_upstream_is_masked() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let frame = close_frame(GOING_AWAY, "draining", Some(key));
        assert_eq!(frame[0], 0x88);
        assert_eq!(frame[1], 0x80 | 10, "mask bit set");
        assert_eq!(&frame[2..6], &key);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(&unmasked[..2], &1001u16.to_be_bytes());
        assert_eq!(&unmasked[2..], b"draining");
    }

    #[test]
    fn close_reason_is_truncated_to_fit_a_control_frame() {
        let long = "é".repeat(100); // 200 bytes
        let frame = close_frame(GOING_AWAY, &long, None);
        let payload = &frame[2..];
        assert!(payload.len() <= 125);
        assert_eq!(usize::from(frame[1]), payload.len());
        // Cut on a character boundary, so the reason stays valid UTF-8.
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
