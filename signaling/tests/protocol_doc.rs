//! docs/protocol.md must show every frame type and error code, and every JSON example in it
//! must be a frame this build decodes — so the document cannot drift from the code.

use std::collections::BTreeSet;

use natter_signaling::codec::Encoding;
use natter_signaling::{ClientFrame, ErrorCode, ServerFrame};

fn json_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```json") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unterminated ```json block");
    blocks
}

#[test]
fn docs_cover_every_frame() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let mut client = BTreeSet::new();
    let mut server = BTreeSet::new();
    for block in json_blocks(&doc) {
        let bytes = block.trim().as_bytes();
        // A client example must also pass the bounds checks the server applies.
        let as_client = Encoding::Json.decode_client(bytes);
        let as_server = Encoding::Json.decode::<ServerFrame>(bytes);
        // Some frames read the same both ways (`settings`): they count for both sides.
        if let Ok(f) = &as_client {
            // Both encodings carry it unchanged.
            let bin = Encoding::Binary.encode(f);
            assert_eq!(&Encoding::Binary.decode_client(&bin).unwrap(), f);
            client.insert(f.type_name());
        }
        if let Ok(f) = &as_server {
            let bin = Encoding::Binary.encode(f);
            assert_eq!(&Encoding::Binary.decode::<ServerFrame>(&bin).unwrap(), f);
            server.insert(f.type_name());
        }
        if let (Err(c), Err(s)) = (as_client, as_server) {
            panic!("example is neither frame:\n{block}\nas client: {c}\nas server: {s}")
        }
    }
    let want_client: BTreeSet<_> = ClientFrame::TYPES.iter().copied().collect();
    let want_server: BTreeSet<_> = ServerFrame::TYPES.iter().copied().collect();
    let undocumented: Vec<_> = want_client.difference(&client).collect();
    assert!(
        undocumented.is_empty(),
        "client frames without an example: {undocumented:?}"
    );
    let undocumented: Vec<_> = want_server.difference(&server).collect();
    assert!(
        undocumented.is_empty(),
        "server frames without an example: {undocumented:?}"
    );
    let unlisted: Vec<_> = server.difference(&want_server).collect();
    assert!(unlisted.is_empty(), "ServerFrame::TYPES lacks {unlisted:?}");
    for code in ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.http_status());
        assert!(doc.contains(&row), "error code table lacks {row}");
    }
}
