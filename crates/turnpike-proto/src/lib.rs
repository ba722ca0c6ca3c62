//! STUN wire format for Turnpike, without I/O.
//!
//! Two paths share this crate, and a differential test keeps them honest:
//!
//! * **The fast path** ([`view`], [`fast`]): a zero-copy, allocation-free parser that validates a
//!   datagram's framing, FINGERPRINT and attributes in one pass and summarises what a Binding
//!   request asked for ([`MessageView`]), and a writer that encodes the Binding success response
//!   straight into a caller-owned buffer ([`fast::BindingSuccess`]). This is what the server runs
//!   for almost every packet.
//! * **The general path** ([`general`]): full decoding and encoding on the `stun_codec` crate with
//!   an attribute set extended by the RFC 5780 attributes it lacks (PADDING, and a RESPONSE-PORT
//!   that accepts both the 2- and the 4-byte encoding). It serves the rarer requests (RFC 5780
//!   attributes), and is the reference the fast path is tested against.
//!
//! RFC 3489 ("classic") messages have no magic cookie, which `stun_codec` refuses, so their
//! responses are written by [`classic`].
//!
//! Nothing in this crate panics on input: every malformed message is a [`ParseError`] or a
//! recorded problem in the [`MessageView`].

pub mod classic;
pub mod client;
pub mod credential;
pub mod fast;
pub mod general;
pub mod integrity;
pub mod turn_client;
pub mod view;

pub use view::{Class, MessageView, ParseError, TransactionId};

/// The magic cookie every RFC 5389/8489 message carries in bytes 4..8.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The size of a STUN message header.
pub const HEADER_LEN: usize = 20;
/// The XOR applied to the CRC-32 of a message to form FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// STUN method numbers this crate knows by name.
pub mod method {
    /// Binding (RFC 8489).
    pub const BINDING: u16 = 0x001;
    /// Allocate (RFC 8656): request only.
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh (RFC 8656): request only.
    pub const REFRESH: u16 = 0x004;
    /// Send (RFC 8656): indication only, client to server.
    pub const SEND: u16 = 0x006;
    /// Data (RFC 8656): indication only, server to client.
    pub const DATA: u16 = 0x007;
    /// CreatePermission (RFC 8656): request only.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind (RFC 8656): request only.
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute type codepoints used by the server.
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489; also RFC 3489).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RESPONSE-ADDRESS (RFC 3489 only; not honoured: a reflection vector).
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// CHANGE-REQUEST (RFC 5780; RFC 3489).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489 responses).
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489 responses).
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM (RFC 8489).
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH (RFC 8489).
    pub const USERHASH: u16 = 0x001E;
    /// CHANNEL-NUMBER (RFC 8656).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656).
    pub const DATA: u16 = 0x0013;
    /// XOR-RELAYED-ADDRESS (RFC 8656).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656).
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656).
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// RESERVATION-TOKEN (RFC 8656).
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656; comprehension-optional).
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// ADDRESS-ERROR-CODE (RFC 8656; comprehension-optional).
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// ICMP (RFC 8656; comprehension-optional).
    pub const ICMP: u16 = 0x8004;
    /// PADDING (RFC 5780).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// PASSWORD-ALGORITHMS (RFC 8489).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ALTERNATE-DOMAIN (RFC 8489).
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER.
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780).
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Whether an attribute type is comprehension-required (RFC 8489 §14: 0x0000–0x7FFF).
    pub const fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }

    /// Whether a comprehension-required attribute is one RFC 8656 defines for TURN.
    ///
    /// Binding requests do not understand these (a Binding request carrying one earns a 420);
    /// the TURN methods do.
    pub const fn is_turn(t: u16) -> bool {
        matches!(
            t,
            CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | RESERVATION_TOKEN
        )
    }

    /// Whether this server understands a comprehension-required attribute.
    ///
    /// Everything RFC 8489 and RFC 5780 define is understood (even where a Binding request
    /// ignores it, such as USERNAME); anything else comprehension-required earns a 420.
    pub const fn is_understood(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | CHANGE_REQUEST
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | REALM
                | NONCE
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | PADDING
                | RESPONSE_PORT
        )
    }
}

/// Computes the FINGERPRINT value of `msg_prefix`, the message up to (not including) the
/// FINGERPRINT attribute, whose header length field already counts the FINGERPRINT attribute.
pub fn fingerprint(msg_prefix: &[u8]) -> u32 {
    crc32fast::hash(msg_prefix) ^ FINGERPRINT_XOR
}

/// The message-type field for a method and class (RFC 8489 §5, the interleaved bit layout).
pub const fn message_type(method: u16, class: Class) -> u16 {
    let c = class as u16;
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

/// Splits a message-type field into (method, class). The top two bits must already be zero.
pub const fn split_message_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let c = ((t >> 4) & 0b01) | ((t >> 7) & 0b10);
    let class = match c {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for method in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(method, class);
                assert_eq!(t & 0xC000, 0);
                assert_eq!(split_message_type(t), (method, class));
            }
        }
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Indication), 0x0011);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
    }
}
