//! The fixed binary layout every message of this crate shares (load and
//! channel): a 4-byte magic, a version byte, big-endian integers,
//! length-prefixed fields, and nothing after the last field.

use crate::ProtocolError;

/// What tells one family of messages from another: its version byte, its
/// size limit and the errors its reader answers with.
pub(crate) struct Format {
    pub(crate) version: u8,
    /// No message of the family is longer.
    pub(crate) max: usize,
    /// A shortfall, wrong magic, bad length or trailing byte in the message
    /// named by the argument.
    pub(crate) malformed: fn(&'static str) -> ProtocolError,
    /// A version byte other than [`version`](Self::version).
    pub(crate) wrong_version: ProtocolError,
}

/// Builds a message field by field.
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new(format: &Format, magic: &[u8; 4]) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(magic);
        b.push(format.version);
        Self(b)
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A length byte, then the ASCII text (the caller checked its length).
    pub(crate) fn text(mut self, v: &str) -> Self {
        self.0.push(v.len() as u8);
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    /// A u16 length, then the bytes (the caller checked the length fits).
    pub(crate) fn bytes16(self, v: &[u8]) -> Self {
        self.u16(v.len() as u16).bytes(v)
    }
    /// A u32 length, then the bytes (the caller checked the length fits).
    pub(crate) fn bytes32(self, v: &[u8]) -> Self {
        self.u32(v.len() as u32).bytes(v)
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a message field by field; any shortfall, wrong magic, out-of-range
/// length or trailing byte is the format's `malformed` error.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
    malformed: fn(&'static str) -> ProtocolError,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        format: &Format,
        bytes: &'a [u8],
        magic: &[u8; 4],
        what: &'static str,
    ) -> Result<Self, ProtocolError> {
        let malformed = format.malformed;
        if bytes.len() > format.max {
            return Err(malformed(what));
        }
        let mut r = Self {
            rest: bytes,
            what,
            malformed,
        };
        if r.take(4)? != magic {
            return Err(malformed(what));
        }
        if r.u8()? != format.version {
            return Err(format.wrong_version.clone());
        }
        Ok(r)
    }
    pub(crate) fn malformed(&self) -> ProtocolError {
        (self.malformed)(self.what)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(self.malformed());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let bad = self.malformed();
        self.take(N)?.try_into().map_err(|_| bad)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// Length-prefixed printable ASCII (no spaces), 1 to `max` bytes.
    pub(crate) fn text(
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
    /// A u16 length of `min..=max`, then that many bytes.
    pub(crate) fn bytes16(&mut self, min: usize, max: usize) -> Result<&'a [u8], ProtocolError> {
        let n = usize::from(self.u16()?);
        self.sized(n, min, max)
    }
    /// A u32 length of `min..=max`, then that many bytes.
    pub(crate) fn bytes32(&mut self, min: usize, max: usize) -> Result<&'a [u8], ProtocolError> {
        let n = usize::try_from(self.u32()?).map_err(|_| self.malformed())?;
        self.sized(n, min, max)
    }
    fn sized(&mut self, n: usize, min: usize, max: usize) -> Result<&'a [u8], ProtocolError> {
        if n < min || n > max {
            return Err(self.malformed());
        }
        self.take(n)
    }
    /// How many bytes are left unread.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// Refuses anything left after the last field.
    pub(crate) fn end(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}
