//! The TURN client builders and parsers against an independent implementation (`stun_codec`):
//! every builder's output decodes there with the same fields, responses that `stun_codec`
//! writes parse here, MESSAGE-INTEGRITY agrees both ways, and no parser panics on any input.

use std::net::SocketAddr;
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use proptest::prelude::*;
use stun_codec::rfc5389::attributes::{
    ErrorCode as CodecErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, Username,
    XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber as CodecChannel, Data, DontFragment, EvenPort, Lifetime, RequestedTransport,
    ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods;
use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily as CodecFamily, RequestedAddressFamily,
};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use turnpike_proto::credential::rest_password;
use turnpike_proto::fast::{write_attr, write_header, write_xor_addr_attr};
use turnpike_proto::integrity::{self, IntegrityError};
use turnpike_proto::turn_client::*;
use turnpike_proto::{Class, attr, method};

stun_codec::define_attribute_enums!(
    TurnAttr,
    TurnAttrDecoder,
    TurnAttrEncoder,
    [
        Username,
        MessageIntegrity,
        CodecErrorCode,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        Fingerprint,
        CodecChannel,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily
    ]
);

const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const USER: &str = "1700000000:alice";
const PASS: &str = "d8soP47RbdIKLDUOpnJPVQyq5Ts=";
const REALM: &str = "turnpike";

fn decode(bytes: &[u8]) -> Message<TurnAttr> {
    match MessageDecoder::<TurnAttr>::new().decode_from_bytes(bytes) {
        Ok(Ok(m)) => m,
        Ok(Err(broken)) => panic!("broken attribute: {:?}", broken.error()),
        Err(e) => panic!("undecodable: {e}"),
    }
}

fn encode(msg: Message<TurnAttr>) -> Vec<u8> {
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .expect("stun_codec encodes")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A holder challenged by a 401 with REALM and NONCE (written by stun_codec).
fn challenged_auth() -> LongTermAuth {
    let mut auth = LongTermAuth::new(Credentials::new(USER, PASS));
    let bytes = error_401(REALM, "nonce-1");
    let r = parse_response(&bytes).unwrap();
    assert_eq!(auth.handle_challenge(&r, false), Challenge::Retry);
    auth
}

fn error_401(realm: &str, nonce: &str) -> Vec<u8> {
    let mut m = Message::<TurnAttr>::new(
        MessageClass::ErrorResponse,
        methods::ALLOCATE,
        TransactionId::new(TID),
    );
    m.add_attribute(CodecErrorCode::new(401, "Unauthorized".to_owned()).unwrap());
    m.add_attribute(Realm::new(realm.to_owned()).unwrap());
    m.add_attribute(Nonce::new(nonce.to_owned()).unwrap());
    encode(m)
}

fn check_mi(m: &Message<TurnAttr>) {
    let mi = m.get_attribute::<MessageIntegrity>().expect("MI");
    let user = m.get_attribute::<Username>().expect("USERNAME");
    let realm = m.get_attribute::<Realm>().expect("REALM");
    assert_eq!(user.name(), USER);
    assert_eq!(realm.text(), REALM);
    assert_eq!(m.get_attribute::<Nonce>().unwrap().value(), "nonce-1");
    mi.check_long_term_credential(user, realm, PASS)
        .expect("MESSAGE-INTEGRITY verifies with stun_codec");
    mi.check_long_term_credential(user, realm, "wrong")
        .expect_err("and fails with another password");
}

#[test]
fn allocate_with_every_option_decodes_in_stun_codec() {
    let auth = challenged_auth();
    let mut out = vec![0xEE; 3]; // builders append
    let req = Request::Allocate(Allocate {
        lifetime: Some(1200),
        family: Some(AddressFamily::V4),
        additional_family: Some(AddressFamily::V6),
        even_port: Some(true),
        reservation_token: Some(0x0102_0304_0506_0708),
        dont_fragment: true,
    });
    assert_eq!(req.encode(&mut out, &TID, Some(&auth), true), Ok(true));
    assert_eq!(&out[..3], &[0xEE; 3]);
    let m = decode(&out[3..]);
    assert_eq!(m.class(), MessageClass::Request);
    assert_eq!(m.method(), methods::ALLOCATE);
    assert_eq!(m.transaction_id().as_bytes(), &TID);
    assert_eq!(
        m.get_attribute::<RequestedTransport>().unwrap().protocol(),
        17
    );
    assert_eq!(
        m.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(1200)
    );
    assert_eq!(
        m.get_attribute::<RequestedAddressFamily>()
            .unwrap()
            .address_family(),
        CodecFamily::V4
    );
    assert_eq!(
        m.get_attribute::<AdditionalAddressFamily>()
            .unwrap()
            .address_family(),
        CodecFamily::V6
    );
    assert!(m.get_attribute::<EvenPort>().unwrap().is_requested());
    assert_eq!(
        m.get_attribute::<ReservationToken>().unwrap().token(),
        0x0102_0304_0506_0708
    );
    assert!(m.get_attribute::<DontFragment>().is_some());
    assert!(m.get_attribute::<Fingerprint>().is_some());
    check_mi(&m);
    // Our own verifier agrees.
    let view = turnpike_proto::MessageView::parse(&out[3..]).unwrap();
    assert!(view.fingerprint);
    integrity::verify(&view, auth.key().unwrap()).unwrap();
}

#[test]
fn unsigned_allocate_is_minimal() {
    let auth = LongTermAuth::new(Credentials::new(USER, PASS));
    let mut out = Vec::new();
    let req = Request::Allocate(Allocate {
        even_port: Some(false),
        ..Allocate::default()
    });
    assert_eq!(req.encode(&mut out, &TID, Some(&auth), false), Ok(false));
    let m = decode(&out);
    assert!(!m.get_attribute::<EvenPort>().unwrap().is_requested());
    assert!(m.get_attribute::<MessageIntegrity>().is_none());
    assert!(m.get_attribute::<Username>().is_none());
    assert!(m.get_attribute::<Fingerprint>().is_none());
    assert_eq!(out.len(), 20 + 8 + 8);
}

#[test]
fn refresh_create_permission_channel_bind_decode() {
    let auth = challenged_auth();
    let mut out = Vec::new();
    let refresh = Request::Refresh {
        lifetime: 0,
        family: Some(AddressFamily::V6),
    };
    assert_eq!(refresh.method(), method::REFRESH);
    assert_eq!(refresh.encode(&mut out, &TID, Some(&auth), false), Ok(true));
    let m = decode(&out);
    assert_eq!(m.method(), methods::REFRESH);
    assert_eq!(
        m.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::ZERO
    );
    assert_eq!(
        m.get_attribute::<RequestedAddressFamily>()
            .unwrap()
            .address_family(),
        CodecFamily::V6
    );
    check_mi(&m);

    let peers = [
        addr("192.0.2.1:1000"),
        addr("[2001:db8::5]:2000"),
        addr("198.51.100.9:0"),
    ];
    out.clear();
    Request::CreatePermission(&peers)
        .encode(&mut out, &TID, Some(&auth), true)
        .unwrap();
    let m = decode(&out);
    assert_eq!(m.method(), methods::CREATE_PERMISSION);
    let got: Vec<SocketAddr> = m
        .attributes()
        .filter_map(|a| match a {
            TurnAttr::XorPeerAddress(p) => Some(p.address()),
            _ => None,
        })
        .collect();
    assert_eq!(got, peers);
    check_mi(&m);

    out.clear();
    let channel = ChannelNumber::new(0x4abc).unwrap();
    Request::ChannelBind {
        channel,
        peer: addr("[2001:db8::7]:3478"),
    }
    .encode(&mut out, &TID, Some(&auth), true)
    .unwrap();
    let m = decode(&out);
    assert_eq!(m.method(), methods::CHANNEL_BIND);
    assert_eq!(m.get_attribute::<CodecChannel>().unwrap().value(), 0x4abc);
    assert_eq!(
        m.get_attribute::<XorPeerAddress>().unwrap().address(),
        addr("[2001:db8::7]:3478")
    );
    check_mi(&m);
}

#[test]
fn send_indication_and_channel_data() {
    let mut out = Vec::new();
    for (data, df) in [
        (&b"hello"[..], true),
        (&b""[..], false),
        (&[7u8; 1001][..], false),
    ] {
        out.clear();
        SendIndication {
            peer: addr("203.0.113.4:5000"),
            data,
            dont_fragment: df,
            fingerprint: true,
        }
        .encode(&mut out, &TID)
        .unwrap();
        let m = decode(&out);
        assert_eq!(m.class(), MessageClass::Indication);
        assert_eq!(m.method(), methods::SEND);
        assert_eq!(
            m.get_attribute::<XorPeerAddress>().unwrap().address(),
            addr("203.0.113.4:5000")
        );
        assert_eq!(m.get_attribute::<Data>().unwrap().data(), data);
        assert_eq!(m.get_attribute::<DontFragment>().is_some(), df);
    }

    let ch = ChannelNumber::MIN;
    for (payload, pad, len) in [
        (&b"abcde"[..], false, 9),
        (&b"abcde"[..], true, 12),
        (&b""[..], true, 4),
        (&b"abcd"[..], true, 8),
    ] {
        out.clear();
        channel_data(&mut out, ch, payload, pad).unwrap();
        assert_eq!(out.len(), len);
        assert_eq!(&out[..2], &[0x40, 0x00]);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[2], out[3]])),
            payload.len()
        );
        let cd = parse_channel_data(&out).unwrap();
        assert_eq!((cd.channel, cd.payload), (ch, payload));
        assert_eq!(
            channel_data_frame_len(&out),
            Some(4 + payload.len().div_ceil(4) * 4)
        );
        match parse_incoming(&out).unwrap() {
            Incoming::ChannelData(c) => assert_eq!(c.payload, payload),
            other => panic!("{other:?}"),
        }
    }
    // Short, overlong, too much trailing data, reserved channel numbers.
    assert_eq!(
        parse_channel_data(&[0x40, 0, 0]),
        Err(DecodeError::ChannelDataLength)
    );
    assert_eq!(
        parse_channel_data(&[0x40, 0, 0, 5, 1, 2]),
        Err(DecodeError::ChannelDataLength)
    );
    assert_eq!(
        parse_channel_data(&[0x40, 0, 0, 1, 1, 0, 0, 0, 0]),
        Err(DecodeError::ChannelDataLength)
    );
    // RFC 5766 channel numbers (0x5000–0x7FFF) are accepted too.
    let cd = parse_channel_data(&[0x7F, 0xFF, 0, 0]).unwrap();
    assert_eq!(cd.channel, ChannelNumber::MAX);
    assert_eq!(
        parse_channel_data(&[0x00, 1, 0, 0]),
        Err(DecodeError::NotTurn)
    );
    assert_eq!(
        parse_incoming(&[0x80, 1, 0, 0]).unwrap_err(),
        DecodeError::NotTurn
    );
    assert_eq!(ChannelNumber::new(0x3FFF), None);
    assert_eq!(ChannelNumber::new(0x8000), None);
    assert_eq!(ChannelNumber::new(0x4FFF), Some(ChannelNumber::RFC8656_MAX));
    assert_eq!(
        ChannelNumber::new(0x5000).map(ChannelNumber::get),
        Some(0x5000)
    );
}

#[test]
fn too_long_messages_are_refused_and_leave_out_alone() {
    let mut out = vec![9u8; 5];
    let peers = vec![addr("[2001:db8::1]:1"); 3000];
    assert_eq!(
        Request::CreatePermission(&peers).encode(&mut out, &TID, None, true),
        Err(EncodeError::TooLong)
    );
    assert_eq!(out, vec![9u8; 5]);
    let big = vec![0u8; 70_000];
    assert_eq!(
        channel_data(&mut out, ChannelNumber::MIN, &big, false),
        Err(EncodeError::TooLong)
    );
    assert_eq!(
        SendIndication {
            peer: addr("192.0.2.1:1"),
            data: &big[..65_530],
            dont_fragment: false,
            fingerprint: false,
        }
        .encode(&mut out, &TID),
        Err(EncodeError::TooLong)
    );
    assert_eq!(out, vec![9u8; 5]);
}

#[test]
fn success_response_from_stun_codec_parses_and_verifies() {
    let mut auth = challenged_auth();
    let mut m = Message::<TurnAttr>::new(
        MessageClass::SuccessResponse,
        methods::ALLOCATE,
        TransactionId::new(TID),
    );
    m.add_attribute(XorRelayAddress::new(addr("192.0.2.15:50000")));
    m.add_attribute(XorRelayAddress::new(addr("[2001:db8::15]:50002")));
    m.add_attribute(XorMappedAddress::new(addr("198.51.100.2:40000")));
    m.add_attribute(Lifetime::from_u32(600));
    m.add_attribute(ReservationToken::new(42));
    m.add_attribute(Software::new("coturn".to_owned()).unwrap());
    let mi = MessageIntegrity::new_long_term_credential(
        &m,
        &Username::new(USER.to_owned()).unwrap(),
        &Realm::new(REALM.to_owned()).unwrap(),
        PASS,
    )
    .unwrap();
    m.add_attribute(mi);
    m.add_attribute(Fingerprint::new(&m).unwrap());
    let bytes = encode(m);

    let r = parse_response(&bytes).unwrap();
    assert!(r.is_success());
    assert_eq!(r.method, method::ALLOCATE);
    assert_eq!(r.class, Class::Success);
    assert_eq!(r.transaction_id, TID);
    assert_eq!(r.relayed_address(), Some(addr("192.0.2.15:50000")));
    assert_eq!(
        r.relayed_address_of(AddressFamily::V6),
        Some(addr("[2001:db8::15]:50002"))
    );
    assert_eq!(r.mapped, Some(addr("198.51.100.2:40000")));
    assert_eq!(r.lifetime, Some(600));
    assert_eq!(r.reservation_token, Some(42));
    assert_eq!(r.software, Some("coturn"));
    assert!(r.integrity && r.fingerprint);
    assert_eq!(r.error_code(), None);
    assert_eq!(auth.verify(&r), Ok(()));
    assert_eq!(
        auth.handle_challenge(&r, true),
        Challenge::NotAChallenge,
        "a success is not a challenge"
    );

    // A holder with another password, or none, does not accept it.
    let mut other = LongTermAuth::new(Credentials::new(USER, "other"));
    assert_eq!(other.verify(&r), Err(IntegrityError::Missing));
    let e = error_401(REALM, "nonce-1");
    other.handle_challenge(&parse_response(&e).unwrap(), false);
    assert_eq!(other.verify(&r), Err(IntegrityError::Mismatch));

    // One flipped bit in LIFETIME: the FINGERPRINT no longer matches.
    let mut bad = bytes.clone();
    let at = bad.windows(4).position(|w| w == [0, 0, 2, 0x58]).unwrap();
    bad[at + 3] ^= 1;
    assert!(matches!(parse_response(&bad), Err(DecodeError::Stun(_))));
}

#[test]
fn challenge_sequence_401_rejected_438() {
    let mut auth = LongTermAuth::new(Credentials::new(USER, PASS));
    assert!(!auth.is_challenged());
    assert_eq!(auth.realm(), None);
    let mut out = Vec::new();
    let first = Request::Allocate(Allocate::default())
        .encode(&mut out, &TID, Some(&auth), false)
        .unwrap();
    assert!(!first);

    let e = error_401(REALM, "nonce-1");
    let r = parse_response(&e).unwrap();
    assert_eq!(r.error.unwrap().code, 401);
    assert_eq!(r.error.unwrap().reason, "Unauthorized");
    assert_eq!(r.realm, Some(REALM));
    assert_eq!(r.nonce, Some("nonce-1"));
    assert_eq!(auth.handle_challenge(&r, first), Challenge::Retry);
    assert_eq!(auth.realm(), Some(REALM));
    assert_eq!(auth.nonce(), Some("nonce-1"));
    assert_eq!(
        auth.key(),
        Some(&integrity::long_term_key(USER, REALM, PASS)[..])
    );
    assert_eq!(auth.password_algorithm(), PasswordAlgorithm::Md5);
    assert!(!auth.uses_sha256_integrity());

    // A 401 to the signed request: wrong credentials.
    assert_eq!(auth.handle_challenge(&r, true), Challenge::Rejected);

    // 438 with a new nonce (and no REALM): retry, signed with the new nonce.
    let mut m = Message::<TurnAttr>::new(
        MessageClass::ErrorResponse,
        methods::REFRESH,
        TransactionId::new(TID),
    );
    m.add_attribute(CodecErrorCode::new(438, "Stale Nonce".to_owned()).unwrap());
    m.add_attribute(Nonce::new("nonce-2".to_owned()).unwrap());
    let stale = encode(m);
    assert_eq!(
        auth.handle_challenge(&parse_response(&stale).unwrap(), true),
        Challenge::Retry
    );
    assert_eq!(auth.nonce(), Some("nonce-2"));
    out.clear();
    Request::Refresh {
        lifetime: 600,
        family: None,
    }
    .encode(&mut out, &TID, Some(&auth), false)
    .unwrap();
    assert_eq!(
        decode(&out).get_attribute::<Nonce>().unwrap().value(),
        "nonce-2"
    );

    // 401 without a NONCE, and errors that are not challenges.
    let mut m = Message::<TurnAttr>::new(
        MessageClass::ErrorResponse,
        methods::ALLOCATE,
        TransactionId::new(TID),
    );
    m.add_attribute(CodecErrorCode::new(401, "Unauthorized".to_owned()).unwrap());
    let bare = encode(m);
    assert_eq!(
        LongTermAuth::new(Credentials::new(USER, PASS))
            .handle_challenge(&parse_response(&bare).unwrap(), false),
        Challenge::BadChallenge
    );
    let mut m = Message::<TurnAttr>::new(
        MessageClass::ErrorResponse,
        methods::ALLOCATE,
        TransactionId::new(TID),
    );
    m.add_attribute(CodecErrorCode::new(486, "Allocation Quota Reached".to_owned()).unwrap());
    let quota = encode(m);
    let r = parse_response(&quota).unwrap();
    assert_eq!(r.error_code(), Some(486));
    assert_eq!(auth.handle_challenge(&r, true), Challenge::NotAChallenge);
}

/// A 401 written by hand with PASSWORD-ALGORITHMS (stun_codec 0.4 does not know it).
fn error_401_with_algorithms(algorithms: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(&mut out, method::ALLOCATE, Class::Error, &TID);
    turnpike_proto::fast::write_error_code(&mut out, 401, "Unauthorized");
    write_attr(&mut out, attr::REALM, REALM.as_bytes());
    write_attr(&mut out, attr::NONCE, b"obMatJos2AAAB-nonce");
    write_attr(&mut out, attr::PASSWORD_ALGORITHMS, algorithms);
    turnpike_proto::fast::finish_with_fingerprint(&mut out, 0);
    out
}

/// The attributes of a message as (type, value) pairs.
fn attributes(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    turnpike_proto::MessageView::parse(bytes)
        .unwrap()
        .attributes()
        .map(|(t, v)| (t, v.to_vec()))
        .collect()
}

fn find(attrs: &[(u16, Vec<u8>)], t: u16) -> Option<&[u8]> {
    attrs.iter().find(|(a, _)| *a == t).map(|(_, v)| &v[..])
}

#[test]
fn password_algorithms_first_supported_is_chosen_and_sha256_integrity_used() {
    // SHA-256 first (with no parameters), then MD5: SHA-256 is chosen.
    let offer = [0, 2, 0, 0, 0, 1, 0, 0];
    let e = error_401_with_algorithms(&offer);
    let r = parse_response(&e).unwrap();
    assert_eq!(r.password_algorithms, Some(&offer[..]));
    let mut auth = LongTermAuth::new(Credentials::new(USER, PASS));
    assert_eq!(auth.handle_challenge(&r, false), Challenge::Retry);
    assert_eq!(auth.password_algorithm(), PasswordAlgorithm::Sha256);
    assert!(auth.uses_sha256_integrity());
    let sha_key = integrity::long_term_key_sha256(USER, REALM, PASS);
    assert_eq!(auth.key(), Some(&sha_key[..]));
    let mut out = Vec::new();
    Request::Allocate(Allocate::default())
        .encode(&mut out, &TID, Some(&auth), true)
        .unwrap();
    let attrs = attributes(&out);
    assert_eq!(find(&attrs, attr::PASSWORD_ALGORITHMS), Some(&offer[..]));
    assert_eq!(
        find(&attrs, attr::PASSWORD_ALGORITHM),
        Some(&[0, 2, 0, 0][..])
    );
    assert_eq!(find(&attrs, attr::MESSAGE_INTEGRITY), None);
    assert!(find(&attrs, attr::MESSAGE_INTEGRITY_SHA256).is_some());
    let view = turnpike_proto::MessageView::parse(&out).unwrap();
    assert!(view.fingerprint);
    integrity::verify_sha256(&view, &sha_key).unwrap();

    // A success signed with MESSAGE-INTEGRITY-SHA256 verifies; a tampered one does not.
    let mut ok = Vec::new();
    write_header(&mut ok, method::ALLOCATE, Class::Success, &TID);
    write_xor_addr_attr(
        &mut ok,
        attr::XOR_RELAYED_ADDRESS,
        addr("192.0.2.1:5000"),
        &TID,
    );
    integrity::append_sha256(&mut ok, 0, &sha_key);
    let r = parse_response(&ok).unwrap();
    assert!(r.integrity_sha256 && !r.integrity);
    assert_eq!(auth.verify(&r), Ok(()));
    let mut bad = ok.clone();
    bad[27] ^= 1; // inside XOR-RELAYED-ADDRESS
    assert_eq!(
        auth.verify(&parse_response(&bad).unwrap()),
        Err(IntegrityError::Mismatch)
    );

    // Only MD5 offered: the MD5 key, still with MESSAGE-INTEGRITY-SHA256.
    let md5_only = error_401_with_algorithms(&[0, 1, 0, 0]);
    let mut md5 = LongTermAuth::new(Credentials::new(USER, PASS));
    assert_eq!(
        md5.handle_challenge(&parse_response(&md5_only).unwrap(), false),
        Challenge::Retry
    );
    assert_eq!(md5.password_algorithm(), PasswordAlgorithm::Md5);
    out.clear();
    Request::Refresh {
        lifetime: 0,
        family: None,
    }
    .encode(&mut out, &TID, Some(&md5), false)
    .unwrap();
    let attrs = attributes(&out);
    assert_eq!(
        find(&attrs, attr::PASSWORD_ALGORITHM),
        Some(&[0, 1, 0, 0][..])
    );
    let view = turnpike_proto::MessageView::parse(&out).unwrap();
    integrity::verify_sha256(&view, &integrity::long_term_key(USER, REALM, PASS)).unwrap();

    // Nothing this client implements.
    let unknown = error_401_with_algorithms(&[0, 3, 0, 0]);
    let mut fresh = LongTermAuth::new(Credentials::new(USER, PASS));
    assert_eq!(
        fresh.handle_challenge(&parse_response(&unknown).unwrap(), false),
        Challenge::UnsupportedAlgorithm
    );
    assert!(!fresh.is_challenged());
}

#[test]
fn address_error_code_and_error_reason() {
    let mut out = Vec::new();
    write_header(&mut out, method::ALLOCATE, Class::Success, &TID);
    write_xor_addr_attr(
        &mut out,
        attr::XOR_RELAYED_ADDRESS,
        addr("192.0.2.1:4000"),
        &TID,
    );
    // ADDRESS-ERROR-CODE: family IPv6, 440 Address Family not Supported.
    let mut v = vec![0x02, 0, 4, 40];
    v.extend_from_slice(b"Address Family not Supported");
    write_attr(&mut out, attr::ADDRESS_ERROR_CODE, &v);
    turnpike_proto::fast::finish(&mut out, 0);
    let r = parse_response(&out).unwrap();
    let ae = r.address_error.unwrap();
    assert_eq!(ae.family, Some(AddressFamily::V6));
    assert_eq!(ae.code, 440);
    assert_eq!(ae.reason, "Address Family not Supported");
    assert_eq!(r.relayed, [Some(addr("192.0.2.1:4000")), None]);

    // A malformed LIFETIME is an error, not a panic or a silent zero.
    out.clear();
    write_header(&mut out, method::REFRESH, Class::Success, &TID);
    write_attr(&mut out, attr::LIFETIME, &[0, 0, 1]);
    turnpike_proto::fast::finish(&mut out, 0);
    assert_eq!(
        parse_response(&out).unwrap_err(),
        DecodeError::MalformedAttribute(attr::LIFETIME)
    );

    // An error response without ERROR-CODE, a request, an indication.
    out.clear();
    write_header(&mut out, method::ALLOCATE, Class::Error, &TID);
    turnpike_proto::fast::finish(&mut out, 0);
    assert_eq!(
        parse_response(&out).unwrap_err(),
        DecodeError::MissingAttribute(attr::ERROR_CODE)
    );
    out.clear();
    Request::Allocate(Allocate::default())
        .encode(&mut out, &TID, None, false)
        .unwrap();
    assert_eq!(
        parse_response(&out).unwrap_err(),
        DecodeError::UnexpectedClass(Class::Request)
    );
}

#[test]
fn data_indication_from_stun_codec() {
    let mut m = Message::<TurnAttr>::new(
        MessageClass::Indication,
        methods::DATA,
        TransactionId::new(TID),
    );
    m.add_attribute(XorPeerAddress::new(addr("[2001:db8::99]:7000")));
    m.add_attribute(Data::new(b"payload!!".to_vec()).unwrap());
    let bytes = encode(m);
    let d = parse_data_indication(&bytes).unwrap();
    assert_eq!(d.peer, addr("[2001:db8::99]:7000"));
    assert_eq!(d.data, b"payload!!");
    assert_eq!(d.transaction_id, TID);
    match parse_incoming(&bytes).unwrap() {
        Incoming::Data(x) => assert_eq!(x, d),
        other => panic!("{other:?}"),
    }
    // A Send indication is not a Data indication.
    let mut out = Vec::new();
    SendIndication {
        peer: addr("192.0.2.1:1"),
        data: b"x",
        dont_fragment: false,
        fingerprint: false,
    }
    .encode(&mut out, &TID)
    .unwrap();
    assert_eq!(
        parse_data_indication(&out),
        Err(DecodeError::UnexpectedMethod(method::SEND))
    );
    match parse_incoming(&error_401(REALM, "n")).unwrap() {
        Incoming::Response(r) => assert_eq!(r.error_code(), Some(401)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rest_credentials_match_coturn_formula() {
    // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
    let c = Credentials::rest(b"secret", 1_700_000_000, "alice");
    assert_eq!(c.username(), USER);
    assert_eq!(rest_password(b"secret", USER), PASS);
    assert_eq!(c, Credentials::new(USER, PASS));
    let dbg = format!("{c:?}");
    assert!(dbg.contains("alice") && !dbg.contains(PASS), "{dbg}");
    let auth = challenged_auth();
    assert!(!format!("{auth:?}").contains(PASS));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

/// Well-framed STUN messages whose attributes are TURN types with random values.
fn arb_framed() -> impl Strategy<Value = Vec<u8>> {
    let types = prop_oneof![
        Just(attr::ERROR_CODE),
        Just(attr::REALM),
        Just(attr::NONCE),
        Just(attr::XOR_RELAYED_ADDRESS),
        Just(attr::XOR_MAPPED_ADDRESS),
        Just(attr::XOR_PEER_ADDRESS),
        Just(attr::LIFETIME),
        Just(attr::RESERVATION_TOKEN),
        Just(attr::ADDRESS_ERROR_CODE),
        Just(attr::PASSWORD_ALGORITHMS),
        Just(attr::DATA),
        Just(attr::MESSAGE_INTEGRITY),
        Just(attr::SOFTWARE),
        any::<u16>(),
    ];
    (
        0u16..0x10,
        0u8..4,
        any::<[u8; 12]>(),
        proptest::collection::vec((types, proptest::collection::vec(any::<u8>(), 0..24)), 0..8),
        any::<bool>(),
    )
        .prop_map(|(m, c, tid, attrs, fp)| {
            let class = [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ][usize::from(c)];
            let mut out = Vec::new();
            write_header(&mut out, m, class, &tid);
            for (t, v) in attrs {
                if t != attr::FINGERPRINT {
                    write_attr(&mut out, t, &v);
                }
            }
            if fp {
                turnpike_proto::fast::finish_with_fingerprint(&mut out, 0);
            } else {
                turnpike_proto::fast::finish(&mut out, 0);
            }
            out
        })
}

fn poke(bytes: &[u8]) {
    let _ = parse_response(bytes);
    let _ = parse_data_indication(bytes);
    let _ = parse_channel_data(bytes);
    let _ = channel_data_frame_len(bytes);
    if let Ok(Incoming::Response(r)) = parse_incoming(bytes) {
        let mut auth = LongTermAuth::new(Credentials::new("u", "p"));
        for signed in [false, true] {
            let _ = auth.handle_challenge(&r, signed);
            let _ = auth.verify(&r);
        }
        let mut out = Vec::new();
        let _ = Request::Allocate(Allocate::default()).encode(&mut out, &TID, Some(&auth), true);
    }
}

proptest! {
    #[test]
    fn parsers_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        poke(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_framed_messages(bytes in arb_framed()) {
        poke(&bytes);
        // Truncations and single-byte corruption of well-framed messages too.
        for cut in [1usize, 4, 7] {
            if bytes.len() > cut {
                poke(&bytes[..bytes.len() - cut]);
            }
        }
        let mut flipped = bytes.clone();
        let i = bytes.len() / 2;
        flipped[i] ^= 0x5A;
        poke(&flipped);
    }

    #[test]
    fn xor_addresses_round_trip(a in arb_addr(), tid in any::<[u8; 12]>()) {
        let mut out = Vec::new();
        write_xor_addr_attr(&mut out, attr::XOR_PEER_ADDRESS, a, &tid);
        prop_assert_eq!(decode_xor_address(&out[4..], &tid), Some(a));
        // stun_codec reads the same address from a Send indication we built.
        let mut msg = Vec::new();
        SendIndication { peer: a, data: b"d", dont_fragment: false, fingerprint: true }
            .encode(&mut msg, &tid)
            .unwrap();
        prop_assert_eq!(decode(&msg).get_attribute::<XorPeerAddress>().unwrap().address(), a);
        // Wrong lengths are refused.
        prop_assert_eq!(decode_xor_address(&out[4..out.len() - 1], &tid), None);
    }

    #[test]
    fn channel_data_round_trips(
        n in 0x4000u16..=0x7FFF,
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        pad in any::<bool>(),
    ) {
        let ch = ChannelNumber::new(n).unwrap();
        let mut out = Vec::new();
        channel_data(&mut out, ch, &payload, pad).unwrap();
        let cd = parse_channel_data(&out).unwrap();
        prop_assert_eq!(cd.channel, ch);
        prop_assert_eq!(cd.payload, &payload[..]);
    }

    #[test]
    fn signed_requests_verify(
        user in "[a-z0-9:]{1,30}",
        pass in "[ -~]{0,30}",
        realm in "[a-z.]{1,20}",
        nonce in "[a-zA-Z0-9]{1,40}",
        fp in any::<bool>(),
    ) {
        let mut auth = LongTermAuth::new(Credentials::new(user.clone(), pass.clone()));
        let e = {
            let mut m = Message::<TurnAttr>::new(
                MessageClass::ErrorResponse,
                methods::ALLOCATE,
                TransactionId::new(TID),
            );
            m.add_attribute(CodecErrorCode::new(401, "Unauthorized".to_owned()).unwrap());
            m.add_attribute(Realm::new(realm.clone()).unwrap());
            m.add_attribute(Nonce::new(nonce.clone()).unwrap());
            encode(m)
        };
        prop_assert_eq!(auth.handle_challenge(&parse_response(&e).unwrap(), false), Challenge::Retry);
        let mut out = Vec::new();
        let ch = ChannelNumber::new(0x4001).unwrap();
        let bind = Request::ChannelBind { channel: ch, peer: "192.0.2.1:9".parse().unwrap() };
        prop_assert!(bind.encode(&mut out, &TID, Some(&auth), fp).unwrap());
        let m = decode(&out);
        let mi = m.get_attribute::<MessageIntegrity>().unwrap();
        prop_assert!(mi
            .check_long_term_credential(
                &Username::new(user).unwrap(),
                &Realm::new(realm).unwrap(),
                &pass
            )
            .is_ok());
    }
}
