//! The published JSON Schemas (`schemas/json/`) are the ones the types
//! generate: a change of a public type that is not written to the schema
//! files (a new version, never an edit of a published one) fails here.
//! `UPDATE_SCHEMAS=1` rewrites the files.

use std::path::PathBuf;

use ledger_public_events::schema::{schema_file_name, schema_files, ENVELOPE_SCHEMA_FILE};
use ledger_public_events::{PUBLIC_TYPES, PUBLIC_VERSION};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/json")
}

#[test]
fn the_committed_schemas_are_the_generated_ones() {
    let dir = schema_dir();
    let generated = schema_files();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &generated {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut drifted = Vec::new();
    for (name, text) in &generated {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(committed) if committed == *text => {}
            Ok(_) => drifted.push(format!("{name} differs from its type")),
            Err(_) => drifted.push(format!("{name} is missing")),
        }
    }
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".schema.json"))
        .collect();
    committed.sort();
    for name in &committed {
        if !generated.iter().any(|(generated, _)| generated == name) {
            drifted.push(format!("{name} has no type"));
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas/json is not what the public types generate: {drifted:?}; \
         a published type never changes: add a new version (UPDATE_SCHEMAS=1 rewrites the files)"
    );
}

#[test]
fn every_public_type_has_a_strict_object_schema() {
    let files = schema_files();
    assert_eq!(files.len(), PUBLIC_TYPES.len() + 1);
    for type_name in PUBLIC_TYPES
        .iter()
        .map(|type_name| schema_file_name(type_name, PUBLIC_VERSION))
        .chain([ENVELOPE_SCHEMA_FILE.to_string()])
    {
        let (_, text) = files
            .iter()
            .find(|(name, _)| *name == type_name)
            .unwrap_or_else(|| panic!("{type_name} is generated"));
        let schema: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(schema["type"], "object", "{type_name}");
        assert_eq!(schema["additionalProperties"], false, "{type_name}");
        assert!(
            schema["required"]
                .as_array()
                .is_some_and(|required| !required.is_empty()),
            "{type_name}"
        );
    }
}
