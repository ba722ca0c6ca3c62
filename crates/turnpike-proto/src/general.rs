//! The general path: full STUN decoding and encoding on `stun_codec`.
//!
//! `stun_codec` covers RFC 5389 and most of RFC 5780, but has no PADDING attribute, its
//! RESPONSE-PORT only accepts the 4-byte encoding, and its CHANGE-REQUEST decoder reads the
//! flags from the wrong bits (0x2/0x1 instead of RFC 5780's 0x4/0x2; its encoder is right).
//! [`Padding`], [`ResponsePort`] and [`ChangeRequest`] replace those, and [`Attr`] is the
//! attribute set the server decodes with. The differential test found the CHANGE-REQUEST bug
//! and a second one, in message-type encoding (see [`error_response`]).
//!
//! The server uses this path for Binding requests that carry RFC 5780 attributes, and as the
//! reference the zero-copy fast path is tested against (error responses are always written by
//! [`crate::fast::ErrorResponse`]; [`error_response`] is their reference): a differential
//! test checks that [`crate::MessageView`] and [`decode`] agree on every message, and that
//! [`binding_success`] and [`crate::fast::BindingSuccess::encode`] produce identical bytes.

use std::net::SocketAddr;

use bytecodec::bytes::{BytesEncoder, RemainingBytesDecoder};
use bytecodec::fixnum::{U32beDecoder, U32beEncoder};
use bytecodec::{
    ByteCount, Decode, DecodeExt, Encode, EncodeExt, Eos, ErrorKind, SizedEncode, TryTaggedDecode,
};
use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm,
    Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
use stun_codec::{
    Attribute, AttributeType, Message, MessageClass, MessageDecoder, MessageEncoder, Method,
    TransactionId,
};

use crate::fast::{BindingSuccess, ErrorResponse};

/// PADDING (RFC 5780 §7.6): free-form bytes that make a message larger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Padding(Vec<u8>);

impl Padding {
    /// The codepoint.
    pub const CODEPOINT: u16 = crate::attr::PADDING;

    /// A PADDING attribute of `len` zero bytes.
    pub fn zeros(len: usize) -> Self {
        Padding(vec![0; len])
    }

    /// The value length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Attribute for Padding {
    type Decoder = PaddingDecoder;
    type Encoder = PaddingEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// [`Padding`] decoder.
#[derive(Debug, Default)]
pub struct PaddingDecoder(RemainingBytesDecoder);

impl Decode for PaddingDecoder {
    type Item = Padding;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }
    fn finish_decoding(&mut self) -> bytecodec::Result<Padding> {
        self.0.finish_decoding().map(Padding)
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for PaddingDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: AttributeType) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == Padding::CODEPOINT)
    }
}

/// [`Padding`] encoder.
#[derive(Debug, Default)]
pub struct PaddingEncoder(BytesEncoder<Vec<u8>>);

impl Encode for PaddingEncoder {
    type Item = Padding;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }
    fn start_encoding(&mut self, item: Padding) -> bytecodec::Result<()> {
        self.0.start_encoding(item.0)
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for PaddingEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// CHANGE-REQUEST (RFC 5780 §7.2): flag 0x4 asks for a different IP, 0x2 for a different port.
///
/// The raw value is kept so that re-encoding is lossless: `stun_codec` checks FINGERPRINT by
/// re-encoding the decoded message, so a lossy attribute would fail (or, worse, pass) the check
/// on bytes other than those received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangeRequest(u32);

impl ChangeRequest {
    /// The codepoint.
    pub const CODEPOINT: u16 = crate::attr::CHANGE_REQUEST;

    /// A CHANGE-REQUEST with the given flags.
    pub fn new(ip: bool, port: bool) -> Self {
        ChangeRequest(u32::from(ip) << 2 | u32::from(port) << 1)
    }

    /// Change IP.
    pub fn ip(&self) -> bool {
        self.0 & 0x4 != 0
    }

    /// Change port.
    pub fn port(&self) -> bool {
        self.0 & 0x2 != 0
    }
}

impl Attribute for ChangeRequest {
    type Decoder = ChangeRequestDecoder;
    type Encoder = ChangeRequestEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// [`ChangeRequest`] decoder.
#[derive(Debug, Default)]
pub struct ChangeRequestDecoder(U32beDecoder);

impl Decode for ChangeRequestDecoder {
    type Item = ChangeRequest;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }
    fn finish_decoding(&mut self) -> bytecodec::Result<ChangeRequest> {
        self.0.finish_decoding().map(ChangeRequest)
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for ChangeRequestDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: AttributeType) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == ChangeRequest::CODEPOINT)
    }
}

/// [`ChangeRequest`] encoder.
#[derive(Debug, Default)]
pub struct ChangeRequestEncoder(U32beEncoder);

impl Encode for ChangeRequestEncoder {
    type Item = ChangeRequest;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }
    fn start_encoding(&mut self, item: ChangeRequest) -> bytecodec::Result<()> {
        self.0.start_encoding(item.0)
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for ChangeRequestEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// RESPONSE-PORT (RFC 5780 §7.5), accepting the 4-byte encoding the RFC defines (port + two
/// bytes of padding) and the bare 2-byte port some clients send. Re-encodes losslessly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponsePort(Vec<u8>);

impl ResponsePort {
    /// The codepoint.
    pub const CODEPOINT: u16 = crate::attr::RESPONSE_PORT;

    /// A RESPONSE-PORT for `port`, in the 4-byte encoding.
    pub fn new(port: u16) -> Self {
        let [a, b] = port.to_be_bytes();
        ResponsePort(vec![a, b, 0, 0])
    }

    /// The requested port.
    pub fn port(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
}

impl Attribute for ResponsePort {
    type Decoder = ResponsePortDecoder;
    type Encoder = ResponsePortEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// [`ResponsePort`] decoder.
#[derive(Debug, Default)]
pub struct ResponsePortDecoder(RemainingBytesDecoder);

impl Decode for ResponsePortDecoder {
    type Item = ResponsePort;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }
    fn finish_decoding(&mut self) -> bytecodec::Result<ResponsePort> {
        let v = self.0.finish_decoding()?;
        if v.len() != 2 && v.len() != 4 {
            return Err(ErrorKind::InvalidInput.into());
        }
        Ok(ResponsePort(v))
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for ResponsePortDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: AttributeType) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == ResponsePort::CODEPOINT)
    }
}

/// [`ResponsePort`] encoder.
#[derive(Debug, Default)]
pub struct ResponsePortEncoder(BytesEncoder<Vec<u8>>);

impl Encode for ResponsePortEncoder {
    type Item = ResponsePort;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }
    fn start_encoding(&mut self, item: ResponsePort) -> bytecodec::Result<()> {
        self.0.start_encoding(item.0)
    }
    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }
    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for ResponsePortEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

stun_codec::define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    [
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        AlternateServer,
        Fingerprint,
        ChangeRequest,
        ResponseOrigin,
        OtherAddress,
        ResponsePort,
        Padding
    ]
);

/// Why the general path could not decode or encode a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not a decodable STUN message (framing, magic cookie, header).
    #[error("undecodable STUN message: {0}")]
    Undecodable(String),
    /// The header decoded but an attribute did not (bad value, bad FINGERPRINT, ...).
    #[error("malformed attribute: {0}")]
    BrokenAttribute(String),
    /// The message could not be encoded.
    #[error("cannot encode STUN message: {0}")]
    Encode(String),
}

/// Decodes one whole STUN message with `stun_codec`.
pub fn decode(buf: &[u8]) -> Result<Message<Attr>, CodecError> {
    let mut decoder = MessageDecoder::<Attr>::new();
    match decoder.decode_from_bytes(buf) {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(broken)) => Err(CodecError::BrokenAttribute(broken.error().to_string())),
        Err(e) => Err(CodecError::Undecodable(e.to_string())),
    }
}

/// Encodes `msg`, appending to `out`.
pub fn encode(msg: Message<Attr>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = MessageEncoder::new()
        .encode_into_bytes(msg)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    out.extend_from_slice(&bytes);
    Ok(())
}

fn with_fingerprint(
    mut msg: Message<Attr>,
    fingerprint: bool,
) -> Result<Message<Attr>, CodecError> {
    if fingerprint {
        let fp = Fingerprint::new(&msg).map_err(|e| CodecError::Encode(e.to_string()))?;
        msg.add_attribute(fp);
    }
    Ok(msg)
}

fn software_attr(s: &str) -> Result<Software, CodecError> {
    Software::new(s.to_owned()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Builds the Binding success response described by `resp` (same attributes, same order as
/// [`BindingSuccess::encode`]).
pub fn binding_success(resp: &BindingSuccess<'_>) -> Result<Message<Attr>, CodecError> {
    let mut msg = Message::new(
        MessageClass::SuccessResponse,
        Method::new(crate::method::BINDING).map_err(|e| CodecError::Encode(e.to_string()))?,
        TransactionId::new(*resp.transaction_id),
    );
    msg.add_attribute(XorMappedAddress::new(resp.mapped));
    if let Some(a) = resp.response_origin {
        msg.add_attribute(ResponseOrigin::new(a));
    }
    if let Some(a) = resp.other_address {
        msg.add_attribute(OtherAddress::new(a));
    }
    if let Some(s) = resp.software {
        msg.add_attribute(software_attr(s)?);
    }
    if let Some(p) = resp.padding {
        msg.add_attribute(Padding::zeros(usize::from(p)));
    }
    with_fingerprint(msg, resp.fingerprint)
}

/// Builds an error response (the server writes these with [`ErrorResponse::encode`]; this
/// builder is the reference for the differential test).
///
/// Note: `stun_codec` 0.4 encodes the message type of methods above 0x00F incorrectly (it
/// shifts method bits 4–6 by five and 7–11 by nine places instead of one and two), so only
/// methods 0x000–0x00F, which include Binding and every TURN method, encode correctly here.
pub fn error_response(resp: &ErrorResponse<'_>) -> Result<Message<Attr>, CodecError> {
    let method = Method::new(resp.method).map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut msg = Message::new(
        MessageClass::ErrorResponse,
        method,
        TransactionId::new(*resp.transaction_id),
    );
    let reason = resp
        .reason
        .unwrap_or_else(|| crate::fast::reason_phrase(resp.code));
    let code = ErrorCode::new(resp.code, reason.to_owned())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    msg.add_attribute(code);
    if !resp.unknown.is_empty() {
        msg.add_attribute(UnknownAttributes::new(
            resp.unknown
                .iter()
                .map(|&t| AttributeType::new(t))
                .collect(),
        ));
    }
    if let Some(s) = resp.software {
        msg.add_attribute(software_attr(s)?);
    }
    with_fingerprint(msg, resp.fingerprint)
}

/// Request parameters the Binding handler needs, read from a decoded message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingParams {
    /// CHANGE-REQUEST flags (ip, port).
    pub change_request: Option<(bool, bool)>,
    /// RESPONSE-PORT.
    pub response_port: Option<u16>,
    /// PADDING length.
    pub padding: Option<usize>,
    /// FINGERPRINT present (and, since decoding succeeded, valid).
    pub fingerprint: bool,
    /// Unknown comprehension-required attribute types, in order, without duplicates.
    pub unknown: Vec<u16>,
}

/// Extracts [`BindingParams`] from a decoded message.
pub fn binding_params(msg: &Message<Attr>) -> BindingParams {
    let mut p = BindingParams {
        change_request: msg
            .get_attribute::<ChangeRequest>()
            .map(|c| (c.ip(), c.port())),
        response_port: msg.get_attribute::<ResponsePort>().map(ResponsePort::port),
        padding: msg.get_attribute::<Padding>().map(Padding::len),
        fingerprint: msg.get_attribute::<Fingerprint>().is_some(),
        unknown: Vec::new(),
    };
    for raw in msg.unknown_attributes() {
        let t = raw.get_type();
        if t.is_comprehension_required()
            && !crate::attr::is_understood(t.as_u16())
            && !p.unknown.contains(&t.as_u16())
        {
            p.unknown.push(t.as_u16());
        }
    }
    p
}

/// The XOR-MAPPED-ADDRESS of a decoded response, if any (for clients and tests).
pub fn xor_mapped_address(msg: &Message<Attr>) -> Option<SocketAddr> {
    msg.get_attribute::<XorMappedAddress>().map(|a| a.address())
}
