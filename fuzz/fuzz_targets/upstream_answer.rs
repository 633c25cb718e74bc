//! The upstream answer parser (`upstream::h1`) never panics on any bytes, however they are
//! split across reads, and never hands out more body than it was given: what it decodes
//! comes from the bytes after the head, in order.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::upstream::h1::{Decoded, parse_response_head};

fuzz_target!(|input: &[u8]| {
    // First byte: HEAD or not, and where the bytes are split into two reads.
    let Some((&control, wire)) = input.split_first() else {
        return;
    };
    let head_request = control & 1 == 1;
    let split = usize::from(control >> 1).min(wire.len());
    let mut buf = BytesMut::from(&wire[..split]);
    let mut rest = &wire[split..];
    let mut interim = 0;
    let head = loop {
        match parse_response_head(&mut buf, head_request, &mut interim) {
            Err(_) => return,
            Ok(Some(head)) => break head,
            Ok(None) if rest.is_empty() => return,
            Ok(None) => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
        }
    };
    let after_head = [&buf[..], rest].concat();
    let mut decoder = head.body;
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Err(_) => return,
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "empty data frame");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) if rest.is_empty() => {
                let _ = decoder.closed();
                break;
            }
            Ok(Decoded::NeedMore) => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
        }
    }
    assert!(body.len() <= after_head.len(), "more body than bytes");
    // Every body byte is one of the bytes after the head, in order.
    let mut source = after_head.iter();
    for byte in &body {
        assert!(source.any(|b| b == byte), "a body byte that was not sent");
    }
});
