//! SSH wire encoding (RFC 4251 §5): a bounds-checked reader and a writer.
//! Every parser in the SSH layer reads through [`Reader`], which never
//! panics and never allocates more than the input holds.

use thiserror::Error;

/// Message numbers used by Warren (RFC 4250 §4.1, plus OpenSSH extensions).
pub mod msg {
    pub const DISCONNECT: u8 = 1;
    pub const IGNORE: u8 = 2;
    pub const UNIMPLEMENTED: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const SERVICE_REQUEST: u8 = 5;
    pub const SERVICE_ACCEPT: u8 = 6;
    pub const EXT_INFO: u8 = 7;
    pub const KEXINIT: u8 = 20;
    pub const NEWKEYS: u8 = 21;
    pub const KEX_ECDH_INIT: u8 = 30;
    pub const KEX_ECDH_REPLY: u8 = 31;
    pub const USERAUTH_REQUEST: u8 = 50;
    pub const USERAUTH_FAILURE: u8 = 51;
    pub const USERAUTH_SUCCESS: u8 = 52;
    pub const USERAUTH_BANNER: u8 = 53;
    pub const USERAUTH_PK_OK: u8 = 60;
    pub const GLOBAL_REQUEST: u8 = 80;
    pub const REQUEST_SUCCESS: u8 = 81;
    pub const REQUEST_FAILURE: u8 = 82;
    pub const CHANNEL_OPEN: u8 = 90;
    pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
    pub const CHANNEL_OPEN_FAILURE: u8 = 92;
    pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
    pub const CHANNEL_DATA: u8 = 94;
    pub const CHANNEL_EXTENDED_DATA: u8 = 95;
    pub const CHANNEL_EOF: u8 = 96;
    pub const CHANNEL_CLOSE: u8 = 97;
    pub const CHANNEL_REQUEST: u8 = 98;
    pub const CHANNEL_SUCCESS: u8 = 99;
    pub const CHANNEL_FAILURE: u8 = 100;

    /// Transport-layer generic messages (allowed at any time outside a strict
    /// initial key exchange).
    pub fn is_transport_generic(t: u8) -> bool {
        matches!(t, DISCONNECT | IGNORE | UNIMPLEMENTED | DEBUG)
    }

    /// Messages that may be sent while a key exchange is in progress.
    pub fn is_kex(t: u8) -> bool {
        matches!(t, KEXINIT | NEWKEYS | KEX_ECDH_INIT | KEX_ECDH_REPLY) || is_transport_generic(t)
    }
}

/// Disconnect reason codes (RFC 4250 §4.2.2).
pub mod reason {
    pub const PROTOCOL_ERROR: u32 = 2;
    pub const KEY_EXCHANGE_FAILED: u32 = 3;
    pub const MAC_ERROR: u32 = 5;
    pub const HOST_KEY_NOT_VERIFIABLE: u32 = 9;
    pub const BY_APPLICATION: u32 = 11;
    pub const NO_MORE_AUTH_METHODS: u32 = 14;
}

/// Channel open failure reason codes (RFC 4254 §5.1).
pub mod open_failure {
    pub const ADMINISTRATIVELY_PROHIBITED: u32 = 1;
    pub const CONNECT_FAILED: u32 = 2;
    pub const UNKNOWN_CHANNEL_TYPE: u32 = 3;
    pub const RESOURCE_SHORTAGE: u32 = 4;
    /// The target is not at this end (it is elsewhere): Warren relays of
    /// one cluster tell each other so on a hop. From the range RFC 4250
    /// (4.3) leaves for private use; never sent to anyone else.
    pub const NOT_HERE: u32 = 0xFE00_0001;
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed SSH message: {0}")]
pub struct WireError(pub &'static str);

/// Reads SSH wire types from a byte slice.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, WireError> {
        Ok(self.u8()? != 0)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `string`: length-prefixed bytes (the length is checked against what
    /// is left, so a huge length cannot make anyone allocate).
    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// A `string` that must be UTF-8 (names, commands, host names).
    pub fn utf8(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.string()?).map_err(|_| WireError("string is not UTF-8"))
    }

    /// A `name-list`, as its comma-separated text.
    pub fn name_list(&mut self) -> Result<&'a str, WireError> {
        let s = self.utf8()?;
        if !s.is_ascii() {
            return Err(WireError("name-list is not ASCII"));
        }
        Ok(s)
    }
}

/// Builds an SSH message.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new(msg_type: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.push(msg_type);
        Writer { buf }
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    pub fn bool(self, v: bool) -> Self {
        self.u8(u8::from(v))
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn string(mut self, v: impl AsRef<[u8]>) -> Self {
        put_string(&mut self.buf, v.as_ref());
        self
    }

    pub fn raw(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub fn put_string(buf: &mut Vec<u8>, v: &[u8]) {
    buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
    buf.extend_from_slice(v);
}

/// Appends `v` (an unsigned big-endian integer) as an `mpint`.
pub fn put_mpint(buf: &mut Vec<u8>, v: &[u8]) {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let v = &v[start..];
    let pad = v.first().is_some_and(|&b| b & 0x80 != 0);
    let len = v.len() + usize::from(pad);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    if pad {
        buf.push(0);
    }
    buf.extend_from_slice(v);
}

/// Whether the comma-separated `list` contains `name`.
pub fn list_has(list: &str, name: &str) -> bool {
    list.split(',').any(|n| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_round_trip() {
        let m = Writer::new(7).u32(5).string("abc").bool(true).finish();
        let mut r = Reader::new(&m);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 5);
        assert_eq!(r.utf8().unwrap(), "abc");
        assert!(r.bool().unwrap());
        assert!(r.is_empty());
        assert!(r.u8().is_err());
    }

    #[test]
    fn huge_string_length_is_an_error_not_an_allocation() {
        let m = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(Reader::new(&m).string().is_err());
    }

    #[test]
    fn mpint_encoding() {
        let mut b = Vec::new();
        put_mpint(&mut b, &[0, 0, 0x80, 1]);
        assert_eq!(b, [0, 0, 0, 3, 0, 0x80, 1]);
        b.clear();
        put_mpint(&mut b, &[0, 0x7f]);
        assert_eq!(b, [0, 0, 0, 1, 0x7f]);
        b.clear();
        put_mpint(&mut b, &[0, 0]);
        assert_eq!(b, [0, 0, 0, 0]);
    }
}
