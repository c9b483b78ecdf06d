//! Request tags and the formats they take on the wire.

use std::fmt;

/// The longest tag, in bytes, that [`Tag`] can hold.
pub const MAX_TAG_LEN: usize = 16;

/// The tag at the start of every frame body: the bytes a client chooses for a request
/// and the server echoes in its response.
///
/// A `Tag` holds up to [`MAX_TAG_LEN`] raw bytes inline, so copying one never
/// allocates. How those bytes map to a request number is the business of
/// [`TagFormat`]; the codec and the server treat a tag as opaque bytes and echo it
/// unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// How many bytes of `bytes` are used.
    len: u8,
    /// The tag bytes; the unused tail is always zero so derived equality holds.
    bytes: [u8; MAX_TAG_LEN],
}

impl Tag {
    /// The 4-byte big-endian tag of Go anet's default format.
    ///
    /// ```
    /// # use anet_proto::Tag;
    /// assert_eq!(Tag::from_u32(0x0102_0304).as_bytes(), &[1, 2, 3, 4]);
    /// ```
    pub const fn from_u32(value: u32) -> Tag {
        let b = value.to_be_bytes();
        let mut bytes = [0; MAX_TAG_LEN];
        bytes[0] = b[0];
        bytes[1] = b[1];
        bytes[2] = b[2];
        bytes[3] = b[3];
        Tag { len: 4, bytes }
    }

    /// A tag made of the given bytes, or `None` when there are more than
    /// [`MAX_TAG_LEN`] of them.
    pub fn from_slice(src: &[u8]) -> Option<Tag> {
        if src.len() > MAX_TAG_LEN {
            return None;
        }
        let mut bytes = [0; MAX_TAG_LEN];
        bytes[..src.len()].copy_from_slice(src);
        Some(Tag {
            len: src.len() as u8,
            bytes,
        })
    }

    /// The tag's bytes as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The number of bytes in the tag.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the tag has no bytes (only possible for a zero-width format).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic()) {
            write!(f, "Tag({:?})", String::from_utf8_lossy(bytes))
        } else {
            f.write_str("Tag(0x")?;
            for b in bytes {
                write!(f, "{b:02x}")?;
            }
            f.write_str(")")
        }
    }
}

/// How a tag is laid out on the wire, and how a client numbers its requests in it.
///
/// The default is [`TagFormat::BINARY_U32`]: 4 bytes, big-endian, as Go anet uses.
/// [`TagFormat::ascii`] gives a fixed number of ASCII decimal digits, the way a
/// Thales payShield host header is often used (`"0001"`, `"0002"`, ...).
///
/// Servers never interpret tags: they echo whatever bytes arrived, so a client that
/// puts letters in an ASCII header is served too. Only a client needs a number
/// space, which [`TagFormat::id_space`], [`TagFormat::encode_id`] and
/// [`TagFormat::decode_id`] provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TagFormat {
    /// Width of the tag in bytes.
    width: u8,
    /// Binary big-endian or ASCII decimal digits.
    ascii: bool,
}

impl TagFormat {
    /// 4-byte big-endian binary tag: Go anet's format and the default.
    pub const BINARY_U32: TagFormat = TagFormat {
        width: 4,
        ascii: false,
    };

    /// A big-endian binary tag of `width` bytes.
    ///
    /// # Panics
    ///
    /// When `width` is 0 or more than 8.
    pub const fn binary(width: usize) -> TagFormat {
        assert!(width >= 1 && width <= 8, "binary tag width must be 1..=8");
        TagFormat {
            width: width as u8,
            ascii: false,
        }
    }

    /// A tag of `digits` ASCII decimal digits, zero-padded (`"0042"`).
    ///
    /// # Panics
    ///
    /// When `digits` is 0 or more than [`MAX_TAG_LEN`].
    pub const fn ascii(digits: usize) -> TagFormat {
        assert!(
            digits >= 1 && digits <= MAX_TAG_LEN,
            "ascii tag width must be 1..=16"
        );
        TagFormat {
            width: digits as u8,
            ascii: true,
        }
    }

    /// The tag's width in bytes.
    pub const fn width(&self) -> usize {
        self.width as usize
    }

    /// Whether this is an ASCII-digit format.
    pub const fn is_ascii(&self) -> bool {
        self.ascii
    }

    /// How many distinct request numbers the format can carry: `2^(8·width)` for
    /// binary (saturating at `u64::MAX` for 8 bytes), `10^digits` for ASCII
    /// (saturating likewise).
    pub const fn id_space(&self) -> u64 {
        if self.ascii {
            let mut space: u64 = 1;
            let mut i = 0;
            while i < self.width {
                space = space.saturating_mul(10);
                i += 1;
            }
            space
        } else if self.width >= 8 {
            u64::MAX
        } else {
            1u64 << (8 * self.width as u32)
        }
    }

    /// The tag that carries request number `id`.
    ///
    /// Numbers at or past [`id_space`](Self::id_space) are reduced modulo the space.
    #[inline]
    pub fn encode_id(&self, id: u64) -> Tag {
        let width = self.width();
        let mut bytes = [0u8; MAX_TAG_LEN];
        if self.ascii {
            let mut rest = id % self.id_space().max(1);
            for b in bytes[..width].iter_mut().rev() {
                *b = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
        } else {
            // The low `width` bytes of `id`, big-endian, at the front; one
            // fixed-size store (the bytes after them stay zero). A binary
            // width is 1..=8, so the shift is below 64.
            let front = id << (64 - 8 * width as u32);
            bytes[..8].copy_from_slice(&front.to_be_bytes());
        }
        Tag {
            len: width as u8,
            bytes,
        }
    }

    /// The request number a tag carries, or `None` when the tag is not of this
    /// format (wrong width, or a non-digit in an ASCII tag).
    #[inline]
    pub fn decode_id(&self, tag: &Tag) -> Option<u64> {
        let bytes = tag.as_bytes();
        if bytes.len() != self.width() {
            return None;
        }
        if self.ascii {
            let mut id: u64 = 0;
            for &b in bytes {
                if !b.is_ascii_digit() {
                    return None;
                }
                id = id.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            Some(id)
        } else {
            // Eight bytes read at once; the shift drops those after the
            // tag's length (a binary width is 1..=8).
            let mut first = [0u8; 8];
            first.copy_from_slice(&tag.bytes[..8]);
            Some(u64::from_be_bytes(first) >> (64 - 8 * bytes.len() as u32))
        }
    }
}

impl Default for TagFormat {
    fn default() -> Self {
        TagFormat::BINARY_U32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_width_keeps_the_low_bytes_of_an_id() {
        for width in 1..=8usize {
            let f = TagFormat::binary(width);
            let space = f.id_space();
            for id in [0, 1, 0x80, 0xff, 0x0102_0304_0506_0708, u64::MAX, space - 1] {
                let tag = f.encode_id(id);
                assert_eq!(tag.len(), width);
                let low = if width == 8 { id } else { id % space };
                assert_eq!(tag.as_bytes(), &low.to_be_bytes()[8 - width..]);
                assert_eq!(f.decode_id(&tag), Some(low), "width {width}, id {id:#x}");
                // The same bytes arriving from the wire decode the same.
                let wire = Tag::from_slice(tag.as_bytes()).expect("fits");
                assert_eq!(wire, tag);
                assert_eq!(f.decode_id(&wire), Some(low));
            }
        }
    }

    #[test]
    fn binary_ids_round_trip_big_endian() {
        let f = TagFormat::BINARY_U32;
        assert_eq!(f.id_space(), 1 << 32);
        let tag = f.encode_id(0x0a0b_0c0d);
        assert_eq!(tag.as_bytes(), &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(f.decode_id(&tag), Some(0x0a0b_0c0d));
        assert_eq!(tag, Tag::from_u32(0x0a0b_0c0d));
    }

    #[test]
    fn ascii_ids_are_zero_padded_digits() {
        let f = TagFormat::ascii(4);
        assert_eq!(f.id_space(), 10_000);
        let tag = f.encode_id(42);
        assert_eq!(tag.as_bytes(), b"0042");
        assert_eq!(f.decode_id(&tag), Some(42));
        assert_eq!(f.decode_id(&Tag::from_slice(b"00A2").unwrap()), None);
        assert_eq!(f.decode_id(&Tag::from_slice(b"042").unwrap()), None);
    }

    #[test]
    fn wide_formats_saturate_their_space() {
        assert_eq!(TagFormat::binary(8).id_space(), u64::MAX);
        assert_eq!(TagFormat::ascii(16).id_space(), 10u64.pow(16));
        assert_eq!(TagFormat::binary(1).id_space(), 256);
    }

    #[test]
    fn tag_from_slice_refuses_overlong_input() {
        assert!(Tag::from_slice(&[0; MAX_TAG_LEN + 1]).is_none());
        assert_eq!(Tag::from_slice(b"ab").unwrap().len(), 2);
    }

    #[test]
    fn debug_shows_hex_or_text() {
        assert_eq!(format!("{:?}", Tag::from_u32(1)), "Tag(0x00000001)");
        assert_eq!(
            format!("{:?}", Tag::from_slice(b"0001").unwrap()),
            "Tag(\"0001\")"
        );
    }
}
