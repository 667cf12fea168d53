use proptest::prelude::*;

use super::*;

fn head_of(text: &str, method: Method) -> Result<Option<Head>, ReadError> {
    parse_head(&mut BytesMut::from(text.as_bytes()), &method, false)
}

/// The framing, read from a map and from the fields as received: they must agree.
fn framing_of(text: &str, method: Method) -> (Framing, bool) {
    let raw = parse_head(&mut BytesMut::from(text.as_bytes()), &method, true);
    let head = head_of(text, method).unwrap().unwrap();
    let raw = raw.unwrap().unwrap();
    assert_eq!(
        (raw.framing, raw.keep_alive),
        (head.framing, head.keep_alive),
        "{text:?} read as received"
    );
    (head.framing, head.keep_alive)
}

/// What goes on from a head kept as received is what the proxy forwards from its map (the
/// hop-by-hop fields stripped), field for field, in order within each name; a head with other
/// hop-by-hop fields gets a map.
#[test]
fn fields_as_received_are_what_the_map_forwards() {
    let kept = [
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\n\r\n",
        "HTTP/1.1 200 OK\r\nCONNECTION: Close\r\nclose: x\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\n",
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nEtag: \"a\"\r\n\r\n",
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 2\r\nset-cookie: b=2\r\nX-Empty:\r\nX-Obs: caf\u{e9}\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nConnection: close, keep-alive\r\nEtag: \"b\"\r\n\r\n",
    ];
    let mapped = [
        "HTTP/1.1 200 OK\r\nConnection: x-trace\r\nX-Trace: 1\r\nX-C: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nProxy-Connection: close\r\n\r\n",
    ];
    let many: String = (0..=RAW_MAX).map(|i| format!("x-{i}: {i}\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    let cases = kept.iter().map(|t| (*t, true));
    let cases = cases.chain(mapped.iter().map(|t| (*t, false)));
    for (text, as_received) in cases.chain([(many.as_str(), false)]) {
        let bytes: Vec<u8> = text.chars().map(|c| c as u8).collect();
        let raw = parse_head(&mut BytesMut::from(&bytes[..]), &Method::GET, true)
            .unwrap()
            .unwrap();
        let mut map = parse_head(&mut BytesMut::from(&bytes[..]), &Method::GET, false)
            .unwrap()
            .unwrap();
        let unstripped = map.parts.headers.clone();
        crate::proxy::headers::strip_hop_by_hop(&mut map.parts.headers);
        let mut expected: Vec<(String, Vec<u8>)> = map
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let Some(fields) = raw.fields else {
            assert!(!as_received, "{text:?} was not kept as received");
            assert_eq!(raw.parts.headers, unstripped, "{text:?}");
            continue;
        };
        assert!(as_received, "{text:?} was kept as received");
        assert!(raw.parts.headers.is_empty(), "{text:?} has a map too");
        let mut got: Vec<(String, Vec<u8>)> = fields
            .forwarded()
            .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected, "{text:?}");
        let length = map.parts.headers.get(header::CONTENT_LENGTH);
        assert_eq!(
            fields.forwarded_value(&header::CONTENT_LENGTH),
            length.map(HeaderValue::as_bytes),
            "{text:?}"
        );
    }
}

#[test]
fn framing_follows_rfc_9112() {
    use Framing::*;
    let get = || Method::GET;
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            get(),
            (Length(5), true),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            get(),
            (Length(5), true),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            get(),
            (Chunked, true),
        ),
        // Transfer-Encoding wins over Content-Length, and the connection is closed after.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            get(),
            (Chunked, false),
        ),
        // Transfer-Encoding means nothing in HTTP/1.0.
        (
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
            get(),
            (Length(2), false),
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", get(), (UntilClose, false)),
        ("HTTP/1.1 204 No Content\r\n\r\n", get(), (Length(0), true)),
        (
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            get(),
            (Length(0), true),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            Method::HEAD,
            (Length(0), true),
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            get(),
            (Length(1), false),
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: x, Close\r\ncontent-length: 1\r\n\r\n",
            get(),
            (Length(1), false),
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            get(),
            (Length(1), false),
        ),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            get(),
            (Length(1), true),
        ),
    ];
    for (text, method, expected) in cases {
        assert_eq!(framing_of(text, method), expected, "{text:?}");
    }
}

#[test]
fn a_chunked_response_loses_its_content_length() {
    let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
    let head = head_of(text, Method::GET).unwrap().unwrap();
    assert!(!head.parts.headers.contains_key("content-length"));
    assert!(!head.keep_alive);
}

#[test]
fn a_head_is_parsed_only_when_complete_and_values_share_its_bytes() {
    let text = "HTTP/1.1 404 Nope\r\nx-a: 1\r\nX-B: two words\r\nx-a: 3\r\n\r\nbody";
    for cut in 0..text.len() - 4 {
        assert!(
            head_of(&text[..cut], Method::GET).unwrap().is_none(),
            "{cut}"
        );
    }
    let mut buf = BytesMut::from(text.as_bytes());
    let head = parse_head(&mut buf, &Method::GET, false).unwrap().unwrap();
    assert_eq!(head.parts.status, 404);
    assert_eq!(head.parts.version, Version::HTTP_11);
    let a: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
    assert_eq!(a, ["1", "3"]);
    assert_eq!(head.parts.headers["x-b"], "two words");
    assert_eq!(&buf[..], b"body", "the body stays in the buffer");
}

#[test]
fn malformed_heads_are_errors() {
    for text in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        // Codings other than `chunked` alone would reach the client undeclared.
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert!(head_of(text, Method::GET).is_err(), "{text:?}");
    }
}

/// Feeds `wire` to a decoder `step` bytes at a time; returns the data and trailers it gave.
fn decode_all(
    mut decoder: Decoder,
    wire: &[u8],
    step: usize,
) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(d) => data.extend_from_slice(&d),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => return Ok((data, trailers)),
            Decoded::NeedMore => {
                if fed == wire.len() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "wire ended"));
                }
                let next = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_reads_look_like() {
    let wire = b"3;name=value\r\nabc\r\n10 ; x\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n";
    for step in 1..wire.len() {
        let (data, trailers) = decode_all(Decoder::ChunkSize, wire, step).unwrap();
        assert_eq!(data, b"abc0123456789abcdef", "step {step}");
        assert_eq!(trailers.unwrap()["x-t"], "1");
    }
    let (data, trailers) = decode_all(Decoder::ChunkSize, b"2\r\nok\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"ok"[..], None));
}

#[test]
fn bad_chunked_framing_is_an_error() {
    for wire in [
        &b"zz\r\nab\r\n0\r\n\r\n"[..],
        b"2\r\nabX\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"2\r\nab\r\n0\r\nbad trailer\r\n\r\n",
        // No digit: not a last chunk (hyper refuses these too).
        b"\r\n",
        b"   \r\n",
        b";ext\r\n",
        // A bare LF, or a CR inside an extension.
        b"2\nab\r\n0\r\n\r\n",
        b"2;a\nb\r\nab\r\n0\r\n\r\n",
        b"2;a\rb\r\nab\r\n0\r\n\r\n",
        b"2 x\r\nab\r\n0\r\n\r\n",
    ] {
        assert!(
            decode_all(Decoder::ChunkSize, wire, 64).is_err(),
            "{wire:?}"
        );
    }
}

#[test]
fn a_length_body_ends_at_its_length() {
    let mut decoder = Decoder::from(Framing::Length(4));
    let mut buf = BytesMut::from(&b"abcdefgh"[..]);
    let Decoded::Data(d) = decoder.decode(&mut buf).unwrap() else {
        panic!("data expected");
    };
    assert_eq!((&d[..], decoder), (&b"abcd"[..], Decoder::Done));
    assert_eq!(&buf[..], b"efgh");
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::End));
    assert_eq!(Decoder::from(Framing::Length(0)), Decoder::Done);
}

fn parts(method: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut req = http::Request::builder().method(method).uri("/p?q=1");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap().into_parts().0
}

#[test]
fn request_heads_carry_the_framing_their_body_needs() {
    let host = [("host", "a.test")];
    let length = |n: &'static str| [("host", "a.test"), ("content-length", n)];
    let cases = [
        (parts("GET", &host), true, "", RequestFraming::None),
        (
            parts("POST", &host),
            true,
            "content-length: 0\r\n",
            RequestFraming::None,
        ),
        (parts("DELETE", &host), true, "", RequestFraming::None),
        (parts("POST", &length("0")), true, "", RequestFraming::None),
        (
            parts("PUT", &length("3")),
            false,
            "",
            RequestFraming::Length(3),
        ),
        (
            parts("PUT", &host),
            false,
            "transfer-encoding: chunked\r\n",
            RequestFraming::Chunked,
        ),
    ];
    for (parts, empty, added, framing) in cases {
        let (head, got) =
            encode_head(&parts, None, &AddedFields::NONE, empty, "origin:80").unwrap();
        let head = String::from_utf8(head).unwrap();
        let mut expected = format!("{} /p?q=1 HTTP/1.1\r\n", parts.method);
        for (name, value) in &parts.headers {
            expected += &format!("{name}: {}\r\n", value.to_str().unwrap());
        }
        expected += added;
        expected += "\r\n";
        assert_eq!((head, got), (expected, framing));
    }
    assert!(
        encode_head(
            &parts("PUT", &length("x")),
            None,
            &AddedFields::NONE,
            false,
            "origin:80"
        )
        .is_none()
    );
    // A request without Host gets the server's authority.
    let (head, _) = encode_head(
        &parts("GET", &[]),
        None,
        &AddedFields::NONE,
        true,
        "origin:8080",
    )
    .unwrap();
    assert_eq!(head, b"GET /p?q=1 HTTP/1.1\r\nhost: origin:8080\r\n\r\n");
}

/// `Connection` read from a head's bytes says what the map says, and leaves out what taking it
/// away from the map removes; a token naming another field needs the map.
#[test]
fn connection_read_from_the_bytes_is_what_the_map_says() {
    let cases: [(&[(&str, &str)], bool); 10] = [
        (&[("host", "a"), ("x-a", "1")], true),
        (&[("Connection", "close"), ("x-a", "1")], true),
        (
            &[("CONNECTION", " Keep-Alive "), ("Keep-Alive", "timeout=5")],
            true,
        ),
        (
            &[
                ("connection", "close,, keep-alive"),
                ("close", "x"),
                ("keep-alive", "y"),
            ],
            true,
        ),
        (&[("connection", "keep-alive"), ("close", "kept")], true),
        (
            &[
                ("connection", "close"),
                ("connection", "keep-alive"),
                ("x-b", "2"),
            ],
            true,
        ),
        (&[("connection", ""), ("x-c", "3")], true),
        (&[("connection", "caf\u{e9}, close"), ("close", "x")], true),
        (
            &[("connection", "close, x-secret"), ("x-secret", "1")],
            false,
        ),
        (&[("connection", "upgrade"), ("upgrade", "h2c")], false),
    ];
    for (fields, read) in cases {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for (name, value) in fields {
            text += &format!("{name}: {value}\r\n");
        }
        text += "\r\n";
        let bytes: Vec<u8> = text.chars().map(|c| c as u8).collect();
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut slots);
        let len = match request.parse(&bytes).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("{text:?} is not whole"),
        };
        let mut spans = FieldSpans::EMPTY;
        spans.record(bytes.as_ptr() as usize, request.headers);
        let head = Bytes::copy_from_slice(&bytes[..len]);
        let map = spans.header_map(&head, 0, 0).unwrap();
        let says = spans.connection(&head);
        assert_eq!(says.is_some(), read, "{text:?}");
        let Some(says) = says else { continue };
        let has = |token: &str| {
            list_elements(&map, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
        };
        assert_eq!(
            (says.close, says.keep_alive),
            (has("close"), has("keep-alive")),
            "{text:?}"
        );
        let mut taken = map.clone();
        crate::proxy::headers::remove_connection_named(&mut taken);
        taken.remove(header::CONNECTION);
        assert_eq!(
            spans.header_map(&head, 0, says.fields).unwrap(),
            taken,
            "{text:?}"
        );
    }
}

/// Fields added outside the map go after the map's, before the framing the body needs.
#[test]
fn added_fields_follow_the_maps() {
    static REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    static PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let mut added = AddedFields::NONE;
    added.fields[1] = Some((&REAL_IP, HeaderValue::from_static("10.0.0.1")));
    added.fields[4] = Some((&PROTO, HeaderValue::from_static("https")));
    let parts = parts("POST", &[("host", "a.test"), ("x-a", "1")]);
    let (head, framing) = encode_head(&parts, None, &added, false, "origin:80").unwrap();
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\nx-real-ip: 10.0.0.1\r\n\
         x-forwarded-proto: https\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, RequestFraming::Chunked);
    let mut map = parts.headers.clone();
    added.insert_into(&mut map);
    assert_eq!(map["x-real-ip"], "10.0.0.1");
    assert_eq!(map.len(), 4);
}

proptest! {
    /// Any body, cut into any chunks (with or without extensions), read in any pieces, decodes
    /// back to itself.
    #[test]
    fn chunked_round_trip(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(1usize..300, 1..20),
        ext in any::<bool>(),
        step in 1usize..97,
    ) {
        let mut wire = Vec::new();
        let mut rest = &body[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let mut framed = chunk(piece);
            if ext {
                let at = framed.iter().position(|b| *b == b'\r').unwrap_or(0);
                framed.splice(at..at, b";e=1".iter().copied());
            }
            wire.extend_from_slice(&framed);
            rest = tail;
            i += 1;
        }
        wire.extend_from_slice(LAST_CHUNK);
        let (data, trailers) = decode_all(Decoder::ChunkSize, &wire, step).unwrap();
        prop_assert_eq!(data, body);
        prop_assert!(trailers.is_none());
    }
}

/// Fields written as pieces of their head are the fields that go on, each as `name: value`:
/// pieces break where a field is left out or was not written that way.
#[test]
fn fields_are_written_as_they_go_on() {
    let heads = [
        "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nAccept: */*\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\nHost: a\r\nX: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:a\r\nX:  1\r\nY: 2  \r\nZ: 3\r\nE: \r\nF:\r\nG: 4\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\nX: 1\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: 1\nY: 2\r\nKeep-Alive: 1\r\nConnection: keep-alive\r\n\r\n",
    ];
    for head in heads {
        let fields = RawFields::of_request(head).expect("kept as received");
        let mut written = Vec::new();
        fields.write_forwarded(&mut written);
        let mut expected = Vec::new();
        for (name, value) in fields.forwarded() {
            field(&mut expected, name, value);
        }
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(expected).unwrap(),
            "{head:?}"
        );
    }
}

/// A box given back serves the next head, holding nothing of the head before: not its bytes,
/// not what its fields were found to be.
#[test]
fn a_recycled_box_serves_the_next_head_whole() {
    let first = RawFields::of_request(
        "POST / HTTP/1.1\r\nX-A: 1\r\nHost: a\r\nContent-Length: 3\r\nDate: d\r\n\
         Connection: close\r\n\r\n",
    )
    .expect("kept as received");
    let address: *const RawFields = &*first;
    first.recycle();
    assert_eq!(
        Some(SPARE_FIELDS.with_borrow(|spare| spare.last().map(|fields| fields.head.is_empty()))),
        Some(Some(true)),
        "the head's bytes were let go"
    );
    let second_head = "GET / HTTP/1.1\r\nHost: b\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\n\r\n";
    let second = RawFields::of_request(second_head).expect("kept as received");
    assert!(std::ptr::eq(address, &*second), "the box was reused");
    let mut written = Vec::new();
    second.write_forwarded(&mut written);
    assert_eq!(
        written,
        b"Host: b\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\n"
    );
    // Where the first head had `Host`, `Content-Length`, `Date` and `Connection`, the second
    // has other fields.
    assert_eq!(second.forwarded_count(&header::HOST), 1);
    assert_eq!(second.forwarded_value(&header::CONTENT_LENGTH), None);
    assert_eq!(second.forwarded_value(&header::DATE), None);
    assert_eq!(second.values(&header::CONNECTION).count(), 0);
    assert!(second.keeps_alive(Version::HTTP_11));
}
