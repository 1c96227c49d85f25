//! The associations file parser (`sources::files`): what it accepts loads into
//! the association store.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::{model::Source, sources::associations::AssociationStore, sources::files};

fuzz_target!(|data: &[u8]| {
    let Ok(assocs) = files::parse_associations_file(Path::new("associations.json"), data) else {
        return;
    };
    let store = AssociationStore::new();
    store
        .replace_source(Source::File, assocs)
        .expect("a parsed file loads into the store");
});
