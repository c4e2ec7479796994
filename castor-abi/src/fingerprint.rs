//! Type fingerprints: a stable hash of the shape of a task's argument tuple and of its
//! result type, so that an app and a worker built from different versions of a task
//! library never exchange values whose encoding they read differently (bincode is not
//! self-describing: a reordered struct decodes "successfully" into the wrong fields).
//!
//! The shape is read by tracing the types' serde `Deserialize` with `serde-reflection`:
//! field names and order, each field's type (integer widths included), tuple arities,
//! sequences, maps, options, enum variants (names, order and contents). Named types are
//! inlined by their structure, so renaming a type (not a field) keeps the fingerprint;
//! a recursive reference is written as its depth. The canonical text is hashed with
//! SHA-256, of which the first 8 bytes, in hex, are the fingerprint: the same for the
//! same shape on every Rust version, platform and build.
//!
//! A type that cannot be traced (a custom `Deserialize` that validates what it reads,
//! such as a UUID's or a date's; an untagged enum; `deserialize_any`) falls back to the
//! hash of its `std::any::type_name`, which sees the type's path but not its fields, and
//! can change with the compiler's spelling of it. That is never an error: the build and
//! the dispatch go on. `#[task(version = N)]` replaces both fingerprints by ones made
//! from `N` alone, for a change that keeps the encoding compatible on purpose.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde_reflection::{
    ContainerFormat, Format, Named, Samples, Tracer, TracerConfig, VariantFormat,
};
use sha2::{Digest, Sha256};

/// A task's two fingerprints, computed once per process (see the module's docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// The argument tuple's fingerprint: 16 hex digits.
    pub args: String,
    /// The result type's fingerprint: 16 hex digits.
    pub result: String,
    /// How they were made.
    pub source: FingerprintSource,
}

/// How a task's fingerprints were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FingerprintSource {
    /// Both types were traced.
    Traced,
    /// At least one type could not be traced whole; its fingerprint hashes its type name
    /// (and the part that could be traced).
    TypeName,
    /// The task's `version = N` attribute.
    Version(u32),
}

impl Fingerprints {
    /// The fingerprints of a task whose arguments are `A` and result `R`, or, with
    /// `version`, of that declared version.
    pub fn of<A: DeserializeOwned, R: DeserializeOwned>(version: Option<u32>) -> Fingerprints {
        Fingerprints::from_shapes(shape_fingerprint::<A>, shape_fingerprint::<R>, version)
    }

    /// As [`Fingerprints::of`], from each type's [`shape_fingerprint`].
    pub fn from_shapes(
        args: fn() -> (String, bool),
        result: fn() -> (String, bool),
        version: Option<u32>,
    ) -> Fingerprints {
        if let Some(n) = version {
            return Fingerprints {
                args: hash(&format!("version {n} args")),
                result: hash(&format!("version {n} result")),
                source: FingerprintSource::Version(n),
            };
        }
        let (args, args_traced) = args();
        let (result, result_traced) = result();
        Fingerprints {
            args,
            result,
            source: if args_traced && result_traced {
                FingerprintSource::Traced
            } else {
                FingerprintSource::TypeName
            },
        }
    }
}

/// The fingerprint of `T` and whether it was traced (else it hashes the type's name).
pub fn shape_fingerprint<T: DeserializeOwned>() -> (String, bool) {
    let name = std::any::type_name::<T>();
    match std::panic::catch_unwind(shape_or_partial::<T>) {
        Ok(Ok(text)) => (hash(&text), true),
        Ok(Err(Some(partial))) => (hash(&format!("type {name} partial {partial}")), false),
        Ok(Err(None)) | Err(_) => (hash(&format!("type {name}")), false),
    }
}

/// The canonical text of `T`'s shape, or `None` when it cannot be traced.
pub fn shape<T: DeserializeOwned>() -> Option<String> {
    shape_or_partial::<T>().ok()
}

/// The canonical text of `T`'s shape (`Ok`), or of the part of it that serde-reflection
/// could trace (`Err(Some)`: an enum reached only through a sequence, an option or a map
/// is visited at one variant), or nothing (`Err(None)`: a `Deserialize` that rejects the
/// tracer's made-up values).
fn shape_or_partial<T: DeserializeOwned>() -> Result<String, Option<String>> {
    /// An enum variant whose index the tracer has not found yet has one of the
    /// provisional indices at the top of `u32`.
    const PROVISIONAL: u32 = u32::MAX - 65_536;
    let samples = Samples::new();
    // A pass visits one more variant of each enum it meets, and marks the enums still
    // missing variants; serde-reflection's own loop (`trace_type`) clears the mark of
    // the top-level type only, and a marked enum is visited at its first variant only, so
    // the marks of the enums inside are cleared here, by name. The names are learnt from
    // a round's registry, then the type is traced again with more passes until no
    // variant is missing.
    let mut enums: Vec<String> = Vec::new();
    let mut passes = 16;
    loop {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut root = None;
        for _pass in 0..passes {
            let (format, _) = tracer.trace_type_once::<T>(&samples).map_err(|_| None)?;
            root.get_or_insert(format);
            for name in &enums {
                tracer.check_incomplete_enum(name);
            }
        }
        let registry = match tracer.registry() {
            Ok(registry) => registry,
            Err(serde_reflection::Error::MissingVariants(names)) => {
                for name in names {
                    if !enums.contains(&name) {
                        enums.push(name);
                    }
                }
                if passes >= 1024 {
                    return Err(None);
                }
                passes *= 4;
                continue;
            }
            Err(_) => return Err(None),
        };
        let mut complete = true;
        for (name, container) in &registry {
            if let ContainerFormat::Enum(variants) = container {
                if !enums.contains(name) {
                    enums.push(name.clone());
                    complete = false;
                }
                if variants.keys().any(|&i| i >= PROVISIONAL)
                    || variants
                        .values()
                        .any(|v| matches!(v.value, VariantFormat::Variable(_)))
                {
                    complete = false;
                }
            }
        }
        let text = || {
            let mut out = String::new();
            render(root.as_ref()?, &registry, &mut Vec::new(), &mut out);
            Some(out)
        };
        if complete {
            return text().ok_or(None);
        }
        if passes >= 1024 {
            return Err(text());
        }
        passes *= 4;
    }
}

fn hash(text: &str) -> String {
    let digest = Sha256::digest(format!("castor fingerprint 1\n{text}").as_bytes());
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn render(
    format: &Format,
    registry: &BTreeMap<String, ContainerFormat>,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    let list = |formats: &[Format], stack: &mut Vec<String>, out: &mut String| {
        for (i, f) in formats.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            render(f, registry, stack, out);
        }
    };
    match format {
        Format::TypeName(name) => {
            if let Some(depth) = stack.iter().position(|n| n == name) {
                let _ = write!(out, "rec{depth}");
                return;
            }
            match registry.get(name) {
                Some(container) => {
                    stack.push(name.clone());
                    render_container(container, registry, stack, out);
                    stack.pop();
                }
                None => out.push('?'),
            }
        }
        Format::Variable(_) => out.push('?'),
        Format::Unit => out.push_str("unit"),
        Format::Bool => out.push_str("bool"),
        Format::I8 => out.push_str("i8"),
        Format::I16 => out.push_str("i16"),
        Format::I32 => out.push_str("i32"),
        Format::I64 => out.push_str("i64"),
        Format::I128 => out.push_str("i128"),
        Format::U8 => out.push_str("u8"),
        Format::U16 => out.push_str("u16"),
        Format::U32 => out.push_str("u32"),
        Format::U64 => out.push_str("u64"),
        Format::U128 => out.push_str("u128"),
        Format::F32 => out.push_str("f32"),
        Format::F64 => out.push_str("f64"),
        Format::Char => out.push_str("char"),
        Format::Str => out.push_str("str"),
        Format::Bytes => out.push_str("bytes"),
        Format::Option(inner) => {
            out.push_str("option<");
            render(inner, registry, stack, out);
            out.push('>');
        }
        Format::Seq(inner) => {
            out.push_str("seq<");
            render(inner, registry, stack, out);
            out.push('>');
        }
        Format::Map { key, value } => {
            out.push_str("map<");
            render(key, registry, stack, out);
            out.push(',');
            render(value, registry, stack, out);
            out.push('>');
        }
        Format::Tuple(formats) => {
            out.push_str("tuple(");
            list(formats, stack, out);
            out.push(')');
        }
        Format::TupleArray { content, size } => {
            out.push_str("array(");
            render(content, registry, stack, out);
            let _ = write!(out, ";{size})");
        }
    }
}

fn render_fields(
    fields: &[Named<Format>],
    registry: &BTreeMap<String, ContainerFormat>,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.name);
        out.push(':');
        render(&field.value, registry, stack, out);
    }
    out.push('}');
}

fn render_container(
    container: &ContainerFormat,
    registry: &BTreeMap<String, ContainerFormat>,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    match container {
        ContainerFormat::UnitStruct => out.push_str("unitstruct"),
        ContainerFormat::NewTypeStruct(inner) => {
            out.push_str("newtype(");
            render(inner, registry, stack, out);
            out.push(')');
        }
        ContainerFormat::TupleStruct(formats) => {
            out.push_str("tuplestruct(");
            for (i, f) in formats.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(f, registry, stack, out);
            }
            out.push(')');
        }
        ContainerFormat::Struct(fields) => {
            out.push_str("struct");
            render_fields(fields, registry, stack, out);
        }
        ContainerFormat::Enum(variants) => {
            out.push_str("enum[");
            for (i, (index, variant)) in variants.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{index}:{}", variant.name);
                match &variant.value {
                    VariantFormat::Variable(_) => out.push('?'),
                    VariantFormat::Unit => {}
                    VariantFormat::NewType(inner) => {
                        out.push('(');
                        render(inner, registry, stack, out);
                        out.push(')');
                    }
                    VariantFormat::Tuple(formats) => {
                        out.push('(');
                        for (j, f) in formats.iter().enumerate() {
                            if j > 0 {
                                out.push(',');
                            }
                            render(f, registry, stack, out);
                        }
                        out.push(')');
                    }
                    VariantFormat::Struct(fields) => render_fields(fields, registry, stack, out),
                }
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct V1 {
        qty: u32,
        price_cents: u32,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct V2 {
        price_cents: u32,
        qty: u32,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Color {
        Red,
        Green(u8),
        Blue { depth: Option<Box<Color>> },
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Holder {
        color: Color,
        tags: BTreeMap<String, (i64, bool)>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct NestedPub {
        colors: Vec<Color>,
        tags: BTreeMap<String, (i64, bool)>,
    }

    #[test]
    fn shapes_are_canonical_text() {
        assert_eq!(
            shape::<(V1,)>().as_deref(),
            Some("tuple(struct{qty:u32,price_cents:u32})")
        );
        assert_eq!(shape::<()>().as_deref(), Some("unit"));
        assert_eq!(
            shape::<Color>().as_deref(),
            Some("enum[0:Red,1:Green(u8),2:Blue{depth:option<rec0>}]")
        );
        assert_eq!(
            shape::<(u8, Holder)>().as_deref(),
            Some(
                "tuple(u8,struct{color:enum[0:Red,1:Green(u8),2:Blue{depth:option<rec1>}],tags:map<str,tuple(i64,bool)>})"
            )
        );
        // An enum only inside a sequence is seen at one variant: not a whole shape.
        assert_eq!(shape::<NestedPub>(), None);
        let (_, traced) = shape_fingerprint::<NestedPub>();
        assert!(!traced);
    }

    #[test]
    fn a_reordered_struct_changes_the_fingerprint_and_a_rename_of_the_type_does_not() {
        let v1 = Fingerprints::of::<(V1,), String>(None);
        let v2 = Fingerprints::of::<(V2,), String>(None);
        assert_ne!(v1.args, v2.args);
        assert_eq!(v1.result, v2.result);
        assert_eq!(v1.source, FingerprintSource::Traced);
        assert_eq!(v1.args.len(), 16);
        // Pinned: the fingerprint of a shape never changes between builds.
        assert_eq!(v1.args, hash("tuple(struct{qty:u32,price_cents:u32})"));
    }

    #[test]
    fn an_untraceable_type_falls_back_to_its_name() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Loose {
            A(u32),
            B(String),
        }
        let (fp, traced) = shape_fingerprint::<Loose>();
        assert!(!traced);
        assert_eq!(
            fp,
            hash(&format!("type {}", std::any::type_name::<Loose>()))
        );
    }

    #[test]
    fn a_version_replaces_both() {
        let a = Fingerprints::of::<(V1,), String>(Some(3));
        let b = Fingerprints::of::<(V2,), u64>(Some(3));
        assert_eq!(a, b);
        assert_eq!(a.source, FingerprintSource::Version(3));
    }
}
