//! `exposition::relabel` on any text (an app's `/metrics` is untrusted): no panic; every
//! sample written carries the added labels first; and what was written parses again to
//! exactly itself (nothing passed on that a second reader would cut differently).
#![no_main]

use std::collections::HashSet;

use gilgal_core::exposition::relabel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let extra = [("app", "a\"b".to_owned()), ("instance", "web.0".to_owned())];
    let mut out = String::new();
    relabel(&text, &extra, &mut out, &mut HashSet::new(), 1 << 20);
    for line in out.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (_, labels) = line.split_once('{').expect("a sample has labels");
        assert!(
            labels.starts_with("app=\"a\\\"b\",instance=\"web.0\""),
            "{line:?}"
        );
    }
    let mut again = String::new();
    assert_eq!(relabel(&out, &[], &mut again, &mut HashSet::new(), 1 << 21), 0, "{out:?}");
    assert_eq!(again, out);
});
