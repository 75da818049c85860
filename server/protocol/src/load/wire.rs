//! The fixed binary layout every load message shares: a 4-byte magic, a
//! version byte, big-endian integers, length-prefixed ASCII, and nothing
//! after the last field.

use crate::ProtocolError;

/// Builds a message field by field.
pub(super) struct Writer(Vec<u8>);

impl Writer {
    pub(super) fn new(magic: &[u8; 4]) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(magic);
        b.push(super::VERSION);
        Self(b)
    }
    pub(super) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(super) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(super) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(super) fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A length byte, then the ASCII text (the caller checked its length).
    pub(super) fn text(mut self, v: &str) -> Self {
        self.0.push(v.len() as u8);
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    pub(super) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a message field by field; any shortfall, wrong magic or version,
/// or trailing byte is [`ProtocolError::LoadMalformed`].
pub(super) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(
        bytes: &'a [u8],
        magic: &[u8; 4],
        what: &'static str,
    ) -> Result<Self, ProtocolError> {
        if bytes.len() > super::MAX_MESSAGE {
            return Err(ProtocolError::LoadMalformed(what));
        }
        let mut r = Self { rest: bytes, what };
        if r.take(4)? != magic {
            return Err(ProtocolError::LoadMalformed(what));
        }
        if r.u8()? != super::VERSION {
            return Err(ProtocolError::LoadVersion);
        }
        Ok(r)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::LoadMalformed(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let what = self.what;
        self.take(N)?
            .try_into()
            .map_err(|_| ProtocolError::LoadMalformed(what))
    }
    pub(super) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// Length-prefixed printable ASCII (no spaces), 1 to `max` bytes.
    pub(super) fn text(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a str, ProtocolError> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        if n == 0 || n > max || !b.iter().all(u8::is_ascii_graphic) {
            return Err(ProtocolError::FieldInvalid(field));
        }
        std::str::from_utf8(b).map_err(|_| ProtocolError::FieldInvalid(field))
    }
    /// Refuses anything left after the last field.
    pub(super) fn end(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::LoadMalformed(self.what))
        }
    }
}
