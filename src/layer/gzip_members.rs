//! A gzip blob (one or more members, RFC 1952) read as the concatenation of its members'
//! data, inflated as raw deflate without computing the members' CRC-32s.
//!
//! Why not `flate2`'s `MultiGzDecoder`: it checks each member's CRC-32, which costs about
//! 5 % of a cold ingestion's CPU (docs/design/layers.md#verification) and proves nothing
//! here. The blob's digest covers every byte of every member, trailers included, and the
//! DiffID covers every decompressed byte, so a blob whose CRC is wrong either has the
//! descriptor's digest (then it is the image's blob, bit for bit, and the DiffID decides)
//! or fails that check anyway.
//!
//! Everything else is checked as a gzip decoder does it:
//! - each member starts with `1f 8b 08`; its reserved flag bits are zero; its optional
//!   fields (`FEXTRA`, `FNAME`, `FCOMMENT`, `FHCRC`) are skipped without being buffered;
//! - the deflate data ends with its final block, and the trailer is present;
//! - each member's `ISIZE` trailer field equals its decompressed length modulo 2^32;
//! - bytes after a member either start another member or are an error; at least one
//!   member is present.

use flate2::{Decompress, FlushDecompress, Status};
use std::io::{self, BufRead, Read};

const MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const FLAG_HEADER_CRC: u8 = 0x02;
const FLAG_EXTRA: u8 = 0x04;
const FLAG_NAME: u8 = 0x08;
const FLAG_COMMENT: u8 = 0x10;
const FLAG_RESERVED: u8 = 0xe0;

enum State {
    /// Before a member header; `first` until one has been read.
    Header { first: bool },
    /// Inside a member's deflate data; `produced` bytes of it so far.
    Body { produced: u64 },
    /// After the last member.
    Done,
}

/// The decompressed stream of a gzip blob read from `R`.
pub(crate) struct GzipMembers<R> {
    inner: R,
    inflater: Decompress,
    state: State,
}

impl<R: BufRead> GzipMembers<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            inflater: Decompress::new(false),
            state: State::Header { first: true },
        }
    }

    fn read_header(&mut self) -> io::Result<()> {
        let mut fixed = [0u8; 10];
        self.inner
            .read_exact(&mut fixed)
            .map_err(|e| eof_as("gzip member header is truncated", e))?;
        if fixed[..3] != MAGIC {
            return Err(invalid(
                "bytes after a gzip member do not start another member",
            ));
        }
        let flags = fixed[3];
        if flags & FLAG_RESERVED != 0 {
            return Err(invalid("gzip member header has reserved flag bits set"));
        }
        if flags & FLAG_EXTRA != 0 {
            let mut length = [0u8; 2];
            self.inner
                .read_exact(&mut length)
                .map_err(|e| eof_as("gzip extra field is truncated", e))?;
            self.skip(u64::from(u16::from_le_bytes(length)), "gzip extra field")?;
        }
        if flags & FLAG_NAME != 0 {
            self.skip_zero_terminated("gzip file name")?;
        }
        if flags & FLAG_COMMENT != 0 {
            self.skip_zero_terminated("gzip comment")?;
        }
        if flags & FLAG_HEADER_CRC != 0 {
            self.skip(2, "gzip header CRC")?;
        }
        Ok(())
    }

    fn skip(&mut self, length: u64, what: &str) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(length), &mut io::sink())?;
        if skipped != length {
            return Err(invalid(&format!("{what} is truncated")));
        }
        Ok(())
    }

    fn skip_zero_terminated(&mut self, what: &str) -> io::Result<()> {
        loop {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return Err(invalid(&format!("{what} is not terminated")));
            }
            match available.iter().position(|&b| b == 0) {
                Some(end) => {
                    self.inner.consume(end + 1);
                    return Ok(());
                }
                None => {
                    let length = available.len();
                    self.inner.consume(length);
                }
            }
        }
    }

    fn read_trailer(&mut self, produced: u64) -> io::Result<()> {
        let mut trailer = [0u8; 8];
        self.inner
            .read_exact(&mut trailer)
            .map_err(|e| eof_as("gzip member trailer is truncated", e))?;
        // Bytes 0..4 are the CRC-32, deliberately unchecked (see the module comment).
        let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        if size != produced as u32 {
            return Err(invalid(&format!(
                "gzip member trailer gives a size of {size} bytes (modulo 2^32), but the member holds {produced}"
            )));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, output: &mut [u8]) -> io::Result<usize> {
        if output.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Header { first } => {
                    if !first && self.inner.fill_buf()?.is_empty() {
                        self.state = State::Done;
                        return Ok(0);
                    }
                    self.read_header()?;
                    self.inflater.reset(false);
                    self.state = State::Body { produced: 0 };
                }
                State::Body { produced } => {
                    let input = self.inner.fill_buf()?;
                    let at_end = input.is_empty();
                    let (in_before, out_before) =
                        (self.inflater.total_in(), self.inflater.total_out());
                    let status = self
                        .inflater
                        .decompress(input, output, FlushDecompress::None)
                        .map_err(|e| {
                            invalid(&format!("corrupt deflate data in gzip member: {e}"))
                        })?;
                    let consumed = (self.inflater.total_in() - in_before) as usize;
                    let written = (self.inflater.total_out() - out_before) as usize;
                    self.inner.consume(consumed);
                    let produced = produced + written as u64;
                    if status == Status::StreamEnd {
                        self.read_trailer(produced)?;
                        self.state = State::Header { first: false };
                    } else {
                        self.state = State::Body { produced };
                        if written == 0 && consumed == 0 {
                            return Err(invalid(if at_end {
                                "gzip blob ends inside a member's deflate data"
                            } else {
                                "deflate data in gzip member makes no progress"
                            }));
                        }
                    }
                    if written > 0 {
                        return Ok(written);
                    }
                }
            }
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn eof_as(message: &str, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid(message)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::GzipMembers;
    use flate2::write::{DeflateEncoder, GzEncoder};
    use flate2::{Compression, GzBuilder};
    use std::io::{BufReader, Read, Write};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn read_all(blob: &[u8]) -> std::io::Result<Vec<u8>> {
        // A small buffer, so that headers, bodies and trailers straddle refills.
        let mut out = Vec::new();
        GzipMembers::new(BufReader::with_capacity(7, blob)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn error_of(blob: &[u8]) -> String {
        read_all(blob).unwrap_err().to_string()
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn reads_a_single_member() {
        let data = sample();
        assert_eq!(read_all(&gzip(&data)).unwrap(), data);
    }

    #[test]
    fn reads_every_member_in_order() {
        let mut blob = gzip(b"first ");
        blob.extend(gzip(b""));
        blob.extend(gzip(b"second"));
        assert_eq!(read_all(&blob).unwrap(), b"first second");
    }

    #[test]
    fn skips_every_optional_header_field() {
        let data = sample();
        let mut encoder = GzBuilder::new()
            .extra(vec![7u8; 300])
            .filename("layer.tar")
            .comment("a comment")
            .write(Vec::new(), Compression::default());
        encoder.write_all(&data).unwrap();
        let mut blob = encoder.finish().unwrap();
        // GzBuilder writes no header CRC: set FHCRC and insert two bytes after the
        // comment's terminator.
        blob[3] |= super::FLAG_HEADER_CRC;
        let header_end = 10 + 2 + 300 + "layer.tar\0".len() + "a comment\0".len();
        blob.splice(header_end..header_end, [0xab, 0xcd]);
        assert_eq!(read_all(&blob).unwrap(), data);
    }

    #[test]
    fn does_not_check_the_crc() {
        let mut blob = gzip(b"contents");
        let crc = blob.len() - 8;
        blob[crc] ^= 0xff;
        assert_eq!(read_all(&blob).unwrap(), b"contents");
    }

    #[test]
    fn refuses_a_wrong_size_in_the_trailer() {
        let mut blob = gzip(b"contents");
        let size = blob.len() - 4;
        blob[size] ^= 0x01;
        assert!(error_of(&blob).contains("trailer gives a size of 9 bytes"));
    }

    #[test]
    fn refuses_truncation_anywhere() {
        let blob = gzip(&sample());
        for (cut, expected) in [
            (5, "header is truncated"),
            (blob.len() / 2, "ends inside a member's deflate data"),
            (blob.len() - 3, "trailer is truncated"),
        ] {
            assert!(
                error_of(&blob[..cut]).contains(expected),
                "cut at {cut}: {}",
                error_of(&blob[..cut])
            );
        }
    }

    #[test]
    fn refuses_bytes_after_a_member_that_are_not_a_member() {
        let mut blob = gzip(b"contents");
        blob.extend_from_slice(&[0u8; 16]);
        assert!(error_of(&blob).contains("do not start another member"));
    }

    #[test]
    fn refuses_reserved_flags_and_an_empty_blob() {
        let mut blob = gzip(b"contents");
        blob[3] |= 0x20;
        assert!(error_of(&blob).contains("reserved flag bits"));
        assert!(error_of(&[]).contains("header is truncated"));
    }

    #[test]
    fn refuses_corrupt_deflate_data() {
        // A raw deflate block of the reserved type 3 after a valid header.
        let mut blob = gzip(b"");
        blob.truncate(10);
        blob.extend_from_slice(&[0x07, 0, 0, 0]);
        assert!(error_of(&blob).contains("corrupt deflate data"));
    }

    /// A member of `data` at `level`, with the optional header fields `flags` selects
    /// (FEXTRA, FNAME, FCOMMENT, FHCRC), made with flate2's raw deflate encoder.
    fn member(data: &[u8], level: u32, flags: u8) -> Vec<u8> {
        let mut blob = vec![0x1f, 0x8b, 0x08, flags & 0x1e, 1, 2, 3, 4, 0, 0xff];
        if flags & 0x04 != 0 {
            blob.extend_from_slice(&[3, 0, 9, 9, 9]);
        }
        if flags & 0x08 != 0 {
            blob.extend_from_slice(b"name\0");
        }
        if flags & 0x10 != 0 {
            blob.extend_from_slice(b"comment\0");
        }
        if flags & 0x02 != 0 {
            blob.extend_from_slice(&[0x12, 0x34]);
        }
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::new(level));
        deflate.write_all(data).unwrap();
        blob.extend(deflate.finish().unwrap());
        blob.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        blob.extend_from_slice(&(data.len() as u32).to_le_bytes());
        blob
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Any sequence of members reads as the concatenation of their data; cut
        /// anywhere but between two members, the blob is an error, never a shorter
        /// stream.
        #[test]
        fn members_read_whole_and_cuts_are_refused(
            members in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..3000), 0u32..10, proptest::prelude::any::<u8>()),
                1..4,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let mut blob = Vec::new();
            let mut expected = Vec::new();
            let mut boundaries = vec![0];
            for (data, level, flags) in &members {
                blob.extend(member(data, *level, *flags));
                boundaries.push(blob.len());
                expected.extend_from_slice(data);
            }
            proptest::prop_assert_eq!(read_all(&blob).unwrap(), expected);
            let cut = cut.index(blob.len());
            if !boundaries.contains(&cut) {
                proptest::prop_assert!(read_all(&blob[..cut]).is_err(), "cut at {}", cut);
            }
        }
    }

    #[test]
    fn reads_members_made_by_hand_around_raw_deflate() {
        let data = sample();
        let mut blob = Vec::new();
        let mut expected = Vec::new();
        for (i, chunk) in data.chunks(77_777).enumerate() {
            // Members written as raw deflate inside hand-made headers and trailers,
            // so that the stored size is checked against an independent encoder.
            let mut deflate = DeflateEncoder::new(Vec::new(), Compression::new(i as u32 % 10));
            deflate.write_all(chunk).unwrap();
            blob.extend_from_slice(&[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff]);
            blob.extend(deflate.finish().unwrap());
            blob.extend_from_slice(&[0, 0, 0, 0]);
            blob.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            expected.extend_from_slice(chunk);
        }
        assert_eq!(read_all(&blob).unwrap(), expected);
    }
}
