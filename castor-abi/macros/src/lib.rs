//! Procedural macros for castor-abi. Use them through `castor_abi::task` and
//! `castor_abi::export_managers!`; their expansions name `::castor_abi`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, Ident, ItemFn, Lit, Meta, Pat, Path, PathArguments,
    ReturnType, Token, Type,
};

/// Declares a task. See `castor_abi::task`'s documentation in castor-abi.
///
/// ```text
/// #[castor_abi::task(thread)]
/// #[castor_abi::task(process, timeout = "30s", max_attempts = 3, backoff = "2s", backoff_cap = "10m")]
/// #[castor_abi::task(thread, name = "emails.send")]
/// #[castor_abi::task(thread, rate = "10/s")]                      // at most 10 starts a second
/// #[castor_abi::task(thread, concurrency = 1, concurrency_key = customer_id)]
/// ```
///
/// `concurrency` and `rate` hold across every worker on the database (see the README's
/// "Concurrency and rate limits").
///
/// The function is kept as written. Next to it, a module of the same name holds `NAME`,
/// `SPEC`, the `Args`/`Output` types, `delay`, `delay_with`, `delay_many` and `handle`
/// (and `delay_in`, `delay_in_with` with castor-abi's `postgres` feature); for a task of
/// at least one parameter, `delay_after` and `delay_after_with`, and, when the first is a
/// `Vec`, `delay_after_all` and `delay_after_all_with`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_task(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Exports a library's managers to the `castor` worker:
/// `castor_abi::export_managers!(manager, reports);`. Use it once per library.
#[proc_macro]
pub fn export_managers(input: TokenStream) -> TokenStream {
    match expand_export(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The most arguments a task takes (serde's tuples, and castor-abi's `args0`..`args16`).
const MAX_ARGS: usize = 16;

/// Three attempts unless a task says otherwise: one for a transient failure, one for a
/// worker that died holding the task (every attempt counts, so a task that kills its
/// worker cannot loop forever).
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

struct TaskAttr {
    mode: Ident,
    name: Option<String>,
    timeout_ms: Option<u64>,
    max_attempts: u32,
    backoff_ms: u64,
    backoff_cap_ms: u64,
    version: Option<u32>,
    concurrency: Option<u32>,
    /// (count, window in milliseconds).
    rate: Option<(u32, u64)>,
    concurrency_key: Option<Ident>,
}

fn parse_attr(attr: TokenStream2) -> syn::Result<TaskAttr> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr.clone())?;
    let mut mode = None;
    let mut out = TaskAttr {
        mode: Ident::new("Thread", Span::call_site()),
        name: None,
        timeout_ms: None,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        backoff_ms: 1_000,
        backoff_cap_ms: 3_600_000,
        version: None,
        concurrency: None,
        rate: None,
        concurrency_key: None,
    };
    for meta in metas {
        match &meta {
            Meta::Path(path) if path.is_ident("thread") || path.is_ident("process") => {
                if mode.is_some() {
                    return Err(syn::Error::new(path.span(), "the mode is given twice"));
                }
                let which = if path.is_ident("thread") {
                    "Thread"
                } else {
                    "Process"
                };
                mode = Some(Ident::new(which, path.span()));
            }
            Meta::NameValue(nv) => {
                let key = nv
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match key.as_str() {
                    "name" => out.name = Some(lit_str(&nv.value)?),
                    "timeout" => out.timeout_ms = Some(duration_ms(&nv.value)?),
                    "max_attempts" => {
                        out.max_attempts = lit_int(&nv.value)?;
                        if out.max_attempts == 0 {
                            return Err(syn::Error::new(
                                nv.value.span(),
                                "max_attempts must be at least 1",
                            ));
                        }
                    }
                    "backoff" => out.backoff_ms = duration_ms(&nv.value)?,
                    "backoff_cap" => out.backoff_cap_ms = duration_ms(&nv.value)?,
                    "version" => out.version = Some(lit_int(&nv.value)?),
                    "concurrency" => {
                        let n = lit_int(&nv.value)?;
                        if n == 0 {
                            return Err(syn::Error::new(
                                nv.value.span(),
                                "concurrency must be at least 1 (it is how many attempts of \
                                 the task may run at once across all workers)",
                            ));
                        }
                        out.concurrency = Some(n);
                    }
                    "rate" => out.rate = Some(rate(&nv.value)?),
                    "concurrency_key" => match &nv.value {
                        Expr::Path(path) if path.path.get_ident().is_some() => {
                            out.concurrency_key = path.path.get_ident().cloned();
                        }
                        other => {
                            return Err(syn::Error::new(
                                other.span(),
                                "concurrency_key names one of the task's arguments, e.g. \
                                 `concurrency_key = customer_id`",
                            ));
                        }
                    },
                    _ => {
                        return Err(syn::Error::new(
                            nv.path.span(),
                            "unknown option; expected one of: name, timeout, max_attempts, backoff, backoff_cap, version, concurrency, rate, concurrency_key",
                        ));
                    }
                }
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "expected `thread`, `process`, or `option = value`",
                ));
            }
        }
    }
    out.mode = mode.ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "declare the task's mode: #[task(thread)] for I/O-bound work on the worker's \
             thread pool, #[task(process)] for CPU-bound or crash-prone work in a child process",
        )
    })?;
    if let (Some(key), None) = (&out.concurrency_key, out.concurrency) {
        return Err(syn::Error::new(
            key.span(),
            "concurrency_key partitions a concurrency limit: declare one too, e.g. \
             `concurrency = 1, concurrency_key = customer_id`",
        ));
    }
    if out.backoff_ms > out.backoff_cap_ms {
        return Err(syn::Error::new(
            attr.span(),
            "backoff is longer than backoff_cap",
        ));
    }
    Ok(out)
}

fn lit_str(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new(other.span(), "expected a string literal")),
    }
}

fn lit_int(expr: &Expr) -> syn::Result<u32> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        other => Err(syn::Error::new(other.span(), "expected an integer")),
    }
}

/// "250ms", "30s", "5m", "2h", "1d" -> milliseconds.
fn duration_ms(expr: &Expr) -> syn::Result<u64> {
    let text = lit_str(expr)?;
    let bad = || {
        syn::Error::new(
            expr.span(),
            format!(
                "invalid duration {text:?}: write a number and a unit, e.g. \"250ms\", \"30s\", \"5m\", \"2h\""
            ),
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = number.checked_mul(factor).ok_or_else(bad)?;
    if ms == 0 {
        return Err(syn::Error::new(
            expr.span(),
            "the duration must be longer than zero",
        ));
    }
    Ok(ms)
}

/// "10/s", "600/m", "1000/h" -> (count, window in milliseconds).
fn rate(expr: &Expr) -> syn::Result<(u32, u64)> {
    let text = lit_str(expr)?;
    let bad = || {
        syn::Error::new(
            expr.span(),
            format!(
                "invalid rate {text:?}: write a count and a unit, e.g. \"10/s\", \"600/m\", \"1000/h\""
            ),
        )
    };
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per_ms = match unit.trim() {
        "s" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(syn::Error::new(
            expr.span(),
            format!("invalid rate {text:?}: the count must be at least 1"),
        ));
    }
    Ok((count, per_ms))
}

fn is_context(ty: &Type) -> bool {
    let Type::Reference(reference) = ty else {
        return false;
    };
    let Type::Path(path) = &*reference.elem else {
        return false;
    };
    path.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "TaskContext")
}

/// The first borrow in `ty` (`&str`, or one inside `Vec<&[u8]>`), and the owned type to
/// use instead (`String`, `Vec<u8>`).
fn borrowed(ty: &Type) -> Option<(&syn::TypeReference, String)> {
    match ty {
        Type::Reference(reference) => {
            let owned = match &*reference.elem {
                Type::Slice(slice) => {
                    let elem = &slice.elem;
                    format!("Vec<{}>", quote!(#elem)).replace(' ', "")
                }
                Type::Path(path) => {
                    let last = path.path.segments.last().map(|s| s.ident.to_string());
                    match last.as_deref() {
                        Some("str") => "String".to_owned(),
                        Some("Path") => "PathBuf".to_owned(),
                        Some("OsStr") => "OsString".to_owned(),
                        Some("CStr") => "CString".to_owned(),
                        _ => quote!(#path).to_string().replace(' ', ""),
                    }
                }
                other => quote!(#other).to_string().replace(' ', ""),
            };
            Some((reference, owned))
        }
        Type::Path(path) => path.path.segments.iter().find_map(|segment| {
            let PathArguments::AngleBracketed(args) = &segment.arguments else {
                return None;
            };
            args.args.iter().find_map(|arg| match arg {
                GenericArgument::Type(ty) => borrowed(ty),
                _ => None,
            })
        }),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(borrowed),
        Type::Array(array) => borrowed(&array.elem),
        Type::Slice(slice) => borrowed(&slice.elem),
        Type::Paren(paren) => borrowed(&paren.elem),
        Type::Group(group) => borrowed(&group.elem),
        _ => None,
    }
}

/// For `Vec<T>` (any path ending in `Vec`), `Some(T)`: a fan-in's first parameter.
fn vec_item_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Vec" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(item) if args.args.len() == 1 => Some(item.clone()),
        _ => None,
    }
}

/// `delay_after` (and `_with`) for a task of at least one parameter: its first argument
/// is a parent's result; `delay_after_all` (and `_with`) when that parameter is a `Vec`:
/// every parent's result, in order.
fn chain_functions(arg_names: &[Ident], arg_types: &[Type]) -> TokenStream2 {
    let (Some(first), Some(first_name)) = (arg_types.first(), arg_names.first()) else {
        return quote!();
    };
    let rest_names = &arg_names[1..];
    let rest_types = &arg_types[1..];
    let rest_codec_fn = format_ident!("args{}", rest_types.len());
    let rest_codec = quote!(::castor_abi::__private::#rest_codec_fn::<#(#rest_types),*>());
    let first_doc = format!(
        "`{}`, the first parameter, is the parent's result.",
        first_name
    );
    let chain = quote! {
        /// Dispatches the task to run once `parent` has completed, with the parent's
        /// result as its first argument (the parent's result type is this task's first
        /// parameter's, checked at compile time) and `args..` as the others. Until then
        /// it is `waiting`; if the parent is discarded, cancelled or purged, it is
        /// cancelled, the reason naming the parent. A parent finished already is handled
        /// at once.
        #[doc = #first_doc]
        ///
        /// # Errors
        /// As `delay`, and a parent not in the client's database.
        pub fn delay_after(
            to: &impl ::castor_abi::Dispatch,
            parent: &::castor_abi::TaskHandle<#first>,
            #(#rest_names: #rest_types),*
        ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
            ::castor_abi::__private::delay_after(to, SPEC, &::castor_abi::DelayOptions::new(), &[parent], false, &(#(#rest_names,)*), #rest_codec)
        }

        /// As `delay_after`, with options (as `delay_with`; a start time delays it past
        /// its parent's completion).
        ///
        /// # Errors
        /// As `delay_after`, and invalid options.
        pub fn delay_after_with(
            to: &impl ::castor_abi::Dispatch,
            options: &::castor_abi::DelayOptions,
            parent: &::castor_abi::TaskHandle<#first>,
            #(#rest_names: #rest_types),*
        ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
            ::castor_abi::__private::delay_after(to, SPEC, options, &[parent], false, &(#(#rest_names,)*), #rest_codec)
        }
    };
    let Some(item) = vec_item_type(first) else {
        return chain;
    };
    quote! {
        #chain

        /// Dispatches the task to run once every one of `parents` has completed (a
        /// fan-in), with their results, in the order given, as its first argument, and
        /// `args..` as the others. Until then it is `waiting`; if any parent is
        /// discarded, cancelled or purged, it is cancelled, the reason naming that parent.
        ///
        /// # Errors
        /// As `delay`, no parents, and a parent not in the client's database.
        pub fn delay_after_all(
            to: &impl ::castor_abi::Dispatch,
            parents: &[::castor_abi::TaskHandle<#item>],
            #(#rest_names: #rest_types),*
        ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
            let parents: ::std::vec::Vec<&::castor_abi::TaskHandle<#item>> = parents.iter().collect();
            ::castor_abi::__private::delay_after(to, SPEC, &::castor_abi::DelayOptions::new(), &parents, true, &(#(#rest_names,)*), #rest_codec)
        }

        /// As `delay_after_all`, with options (as `delay_with`).
        ///
        /// # Errors
        /// As `delay_after_all`, and invalid options.
        pub fn delay_after_all_with(
            to: &impl ::castor_abi::Dispatch,
            options: &::castor_abi::DelayOptions,
            parents: &[::castor_abi::TaskHandle<#item>],
            #(#rest_names: #rest_types),*
        ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
            let parents: ::std::vec::Vec<&::castor_abi::TaskHandle<#item>> = parents.iter().collect();
            ::castor_abi::__private::delay_after(to, SPEC, options, &parents, true, &(#(#rest_names,)*), #rest_codec)
        }
    }
}

/// For `Result<T, E>` (any path ending in `Result`), `Some(T)`.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ok) => Some(ok.clone()),
        _ => None,
    }
}

fn expand_task(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let attr = parse_attr(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "tasks are plain functions; run async code inside with your runtime's block_on",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "tasks cannot be generic: the worker must know the argument types",
        ));
    }
    let fn_name = &sig.ident;
    let vis = &func.vis;
    let task_name = attr.name.clone().unwrap_or_else(|| fn_name.to_string());

    let mut has_ctx = false;
    let mut arg_names = Vec::new();
    let mut arg_types = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new(input.span(), "tasks cannot take `self`"));
        };
        if i == 0 && is_context(&typed.ty) {
            has_ctx = true;
            continue;
        }
        if is_context(&typed.ty) {
            return Err(syn::Error::new(
                typed.ty.span(),
                "the task context must be the first parameter",
            ));
        }
        if let Some((reference, owned)) = borrowed(&typed.ty) {
            return Err(syn::Error::new_spanned(
                reference,
                format!(
                    "task arguments must be owned: they are stored, then decoded in the worker \
                     when the task runs; take `{owned}` instead"
                ),
            ));
        }
        let name = match &*typed.pat {
            Pat::Ident(ident) => ident.ident.clone(),
            _ => format_ident!("arg{}", i),
        };
        arg_names.push(name);
        arg_types.push((*typed.ty).clone());
    }

    // The partition key: the named argument's text (`Display`), spanned at its type so a
    // type without `Display` is reported there.
    let key_fn = match &attr.concurrency_key {
        Some(key) => {
            let Some(index) = arg_names.iter().position(|n| n == key) else {
                let names: Vec<String> = arg_names.iter().map(ToString::to_string).collect();
                return Err(syn::Error::new(
                    key.span(),
                    format!(
                        "concurrency_key = {key} names no argument of the task; its arguments: {}",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            };
            let index = syn::Index::from(index);
            let ty = &arg_types[index.index as usize];
            let to_string = quote::quote_spanned!(ty.span()=> ::castor_abi::__private::PartitionKey::partition_key(&args.#index));
            quote!(::core::option::Option::Some(#to_string))
        }
        None => quote!({
            let _ = args;
            ::core::option::Option::None
        }),
    };
    let limits = {
        let concurrency = match attr.concurrency {
            Some(n) => quote!(::core::option::Option::Some(#n)),
            None => quote!(::core::option::Option::None),
        };
        let rate = match attr.rate {
            Some((count, per_ms)) => quote!(::core::option::Option::Some(::castor_abi::Rate {
                count: #count,
                per: ::core::time::Duration::from_millis(#per_ms),
            })),
            None => quote!(::core::option::Option::None),
        };
        let key = match &attr.concurrency_key {
            Some(key) => {
                let key = key.to_string();
                quote!(::core::option::Option::Some(#key))
            }
            None => quote!(::core::option::Option::None),
        };
        quote!(::castor_abi::TaskLimits {
            concurrency: #concurrency,
            rate: #rate,
            concurrency_key: #key,
        })
    };

    if let ReturnType::Type(_, ty) = &sig.output
        && let Some((reference, owned)) = borrowed(result_ok_type(ty).as_ref().unwrap_or(ty))
    {
        return Err(syn::Error::new_spanned(
            reference,
            format!(
                "a task's result must be owned: it is stored, then decoded by whoever joins the \
                 task; return `{owned}` instead"
            ),
        ));
    }
    let (output, fallible) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok, true),
            None => ((**ty).clone(), false),
        },
    };

    // The serde bounds are checked here, once per type, spanned at what the user wrote:
    // each argument's type, and the return type.
    if arg_types.len() > MAX_ARGS {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!(
                "a task takes at most {MAX_ARGS} arguments: group them in a struct that derives \
                 serde's `Serialize` and `Deserialize`"
            ),
        ));
    }
    let args_codec_fn = format_ident!("args{}", arg_types.len());
    let args_codec = quote!(::castor_abi::__private::#args_codec_fn::<#(#arg_types),*>());
    let result_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let result_codec =
        quote::quote_spanned!(result_span=> ::castor_abi::__private::codec::<Output>());

    let mode = &attr.mode;
    let timeout = match attr.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let max_attempts = attr.max_attempts;
    let version = match attr.version {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let backoff_ms = attr.backoff_ms;
    let backoff_cap_ms = attr.backoff_cap_ms;

    let ctx_arg = if has_ctx {
        quote!(__castor_ctx,)
    } else {
        quote!()
    };
    let call = quote!(super::#fn_name(#ctx_arg #(#arg_names),*));
    let body = if fallible {
        quote!(#call.map_err(::castor_abi::__private::failure_from_error))
    } else {
        quote!(::core::result::Result::Ok(#call))
    };
    let ctx_binding = if has_ctx {
        quote!(__castor_ctx)
    } else {
        quote!(_)
    };
    let mode_text = if attr.mode == "Thread" {
        "thread"
    } else {
        "process"
    };
    let chains = chain_functions(&arg_names, &arg_types);
    let module_doc = format!(
        "Dispatch and join the `{task_name}` task ({mode_text} mode), declared by \
         [`{fn_name}`](fn@super::{fn_name})."
    );

    Ok(quote! {
        #func

        #[doc = #module_doc]
        #[allow(unused_imports, clippy::too_many_arguments)]
        #vis mod #fn_name {
            use super::*;

            /// The task's name, as stored and as the worker knows it.
            pub const NAME: &str = #task_name;

            /// The task's parameters as one tuple (what `delay_many` takes per task).
            pub type Args = (#(#arg_types,)*);

            /// What a successful attempt returns.
            pub type Output = #output;

            /// The task's declaration.
            pub const SPEC: ::castor_abi::TaskSpec = ::castor_abi::TaskSpec {
                name: NAME,
                mode: ::castor_abi::TaskMode::#mode,
                timeout: #timeout,
                max_attempts: #max_attempts,
                backoff: ::castor_abi::Backoff {
                    base: ::core::time::Duration::from_millis(#backoff_ms),
                    cap: ::core::time::Duration::from_millis(#backoff_cap_ms),
                },
                run: __castor_run,
                describe: __castor_describe,
                fingerprints: __castor_fingerprints,
                limits: #limits,
            };

            /// The partition key of the task's keyed concurrency limit, from its arguments.
            #[allow(unused_variables)]
            fn __castor_key(args: &Args) -> ::core::option::Option<::std::string::String> {
                #key_fn
            }

            /// The task's type fingerprints, computed on first use (once per process).
            fn __castor_fingerprints() -> &'static ::castor_abi::Fingerprints {
                static FINGERPRINTS: ::std::sync::OnceLock<::castor_abi::Fingerprints> =
                    ::std::sync::OnceLock::new();
                FINGERPRINTS.get_or_init(|| __castor_codecs().fingerprints(#version))
            }

            /// How the arguments and the result are stored: built here, where the
            /// compiler checks their serde bounds once, at the types as written.
            fn __castor_codecs() -> ::castor_abi::__private::Codecs<Args, Output> {
                ::castor_abi::__private::Codecs {
                    args: #args_codec,
                    result: #result_codec,
                }
            }

            extern "C" fn __castor_describe(
                bytes: ::castor_abi::__private::abi_stable::std_types::RSlice<'_, u8>,
                result: bool,
            ) -> ::castor_abi::__private::abi_stable::std_types::RResult<
                ::castor_abi::__private::abi_stable::std_types::RString,
                ::castor_abi::__private::abi_stable::std_types::RString,
            > {
                ::castor_abi::__private::describe(bytes, result, __castor_codecs())
            }

            extern "C" fn __castor_run(
                host: &::castor_abi::abi::HostCtx<'_>,
                args: ::castor_abi::__private::abi_stable::std_types::RSlice<'_, u8>,
            ) -> ::castor_abi::__private::abi_stable::std_types::RResult<
                ::castor_abi::__private::abi_stable::std_types::RVec<u8>,
                ::castor_abi::abi::TaskFailure,
            > {
                ::castor_abi::__private::run::<Args, Output>(
                    host,
                    args,
                    __castor_codecs(),
                    |#ctx_binding, (#(#arg_names,)*)| #body,
                )
            }

            /// Dispatches the task now with its declared policy; returns its handle.
            ///
            /// # Errors
            /// The arguments do not encode, the task is not part of the client's manager,
            /// or the database refused the write.
            pub fn delay(
                to: &impl ::castor_abi::Dispatch,
                #(#arg_names: #arg_types),*
            ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
                ::castor_abi::__private::delay(to, SPEC, &::castor_abi::DelayOptions::new(), &(#(#arg_names,)*), __castor_codecs().args, __castor_key)
            }

            /// Dispatches the task with options (a start time, a priority, a unique key,
            /// policy overrides).
            ///
            /// # Errors
            /// As `delay`, and invalid options.
            pub fn delay_with(
                to: &impl ::castor_abi::Dispatch,
                options: &::castor_abi::DelayOptions,
                #(#arg_names: #arg_types),*
            ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
                ::castor_abi::__private::delay(to, SPEC, options, &(#(#arg_names,)*), __castor_codecs().args, __castor_key)
            }

            #chains

            ::castor_abi::__if_postgres! {
                /// Dispatches the task inside the app's own PostgreSQL transaction `tx`
                /// (a `castor_abi::postgres::Transaction`, or any of its clients): it
                /// exists, and a worker hears of it, if and only if `tx` commits. `to`
                /// is the manager's client, on the same database; join the handle after
                /// the commit.
                ///
                /// # Errors
                /// As `delay`, and a manager whose database is not PostgreSQL. A failed
                /// insert has aborted `tx`: roll it back.
                pub fn delay_in(
                    tx: &mut impl ::castor_abi::postgres::GenericClient,
                    to: &::castor_abi::Client,
                    #(#arg_names: #arg_types),*
                ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
                    ::castor_abi::__private::delay_in(tx, to, SPEC, &::castor_abi::DelayOptions::new(), &(#(#arg_names,)*), __castor_codecs().args, __castor_key)
                }

                /// As `delay_in`, with options (as `delay_with`).
                ///
                /// # Errors
                /// As `delay_in`, and invalid options (then nothing is written).
                pub fn delay_in_with(
                    tx: &mut impl ::castor_abi::postgres::GenericClient,
                    to: &::castor_abi::Client,
                    options: &::castor_abi::DelayOptions,
                    #(#arg_names: #arg_types),*
                ) -> ::core::result::Result<::castor_abi::TaskHandle<Output>, ::castor_abi::DispatchError> {
                    ::castor_abi::__private::delay_in(tx, to, SPEC, options, &(#(#arg_names,)*), __castor_codecs().args, __castor_key)
                }
            }

            /// Dispatches one task per argument tuple, all in one transaction.
            ///
            /// # Errors
            /// As `delay`; then nothing is dispatched.
            pub fn delay_many(
                to: &impl ::castor_abi::Dispatch,
                args: impl ::core::iter::IntoIterator<Item = Args>,
            ) -> ::core::result::Result<::std::vec::Vec<::castor_abi::TaskHandle<Output>>, ::castor_abi::DispatchError> {
                ::castor_abi::__private::delay_many(to, SPEC, &::castor_abi::DelayOptions::new(), args, __castor_codecs().args, __castor_key)
            }

            /// Dispatches a run every interval (optionally a number of times, or until a
            /// time); each run is its own task. Returns the schedule's handle.
            ///
            /// # Errors
            /// As `delay`, and an invalid combination (a count or end without an
            /// interval, an end in the past, ...), before anything is written.
            pub fn schedule(
                to: &impl ::castor_abi::Dispatch,
                schedule: &::castor_abi::Schedule,
                #(#arg_names: #arg_types),*
            ) -> ::core::result::Result<::castor_abi::ScheduleHandle<Output>, ::castor_abi::DispatchError> {
                ::castor_abi::__private::schedule(to, SPEC, schedule, &(#(#arg_names,)*), __castor_codecs().args)
            }

            /// Binds a periodic declaration to this task (for `manager!`'s `periodic`).
            pub fn periodic(when: ::castor_abi::Periodic<Args>) -> ::castor_abi::PeriodicSpec {
                when.into_spec_encoded(SPEC, __castor_codecs().args.encode)
            }

            /// A handle on an existing task of this kind, by id.
            pub fn handle(client: &::castor_abi::Client, id: ::castor_abi::Uuid) -> ::castor_abi::TaskHandle<Output> {
                ::castor_abi::__private::handle(client, SPEC, id)
            }
        }
    })
}

fn expand_export(input: TokenStream2) -> syn::Result<TokenStream2> {
    let managers = Punctuated::<Path, Token![,]>::parse_terminated.parse2(input)?;
    if managers.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "name at least one manager: castor_abi::export_managers!(manager);",
        ));
    }
    let symbol = Ident::new(
        &abi_stable_shared::mangled_root_module_loader_name(),
        Span::call_site(),
    );
    let managers = managers.iter();
    Ok(quote! {
        /// The library's root module, found by name when `castor` loads it.
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static #symbol: ::castor_abi::__private::abi_stable::library::LibHeader = {
            extern "C" fn __castor_managers() -> ::castor_abi::__private::abi_stable::std_types::RResult<
                ::castor_abi::__private::abi_stable::std_types::RVec<::castor_abi::abi::ManagerDecl>,
                ::castor_abi::__private::abi_stable::std_types::RString,
            > {
                ::castor_abi::__private::managers(&[#(#managers as fn() -> ::castor_abi::Manager),*])
            }
            fn __castor_root() -> ::castor_abi::abi::PluginRootRef {
                ::castor_abi::__private::root_module(__castor_managers)
            }
            extern "C" fn __castor_erased() -> ::castor_abi::__private::abi_stable::library::RootModuleResult {
                ::castor_abi::__private::abi_stable::library::__call_root_module_loader(__castor_root)
            }
            // SAFETY: the constructor returns the `PluginRootRef` the header is typed with.
            unsafe {
                ::castor_abi::__private::abi_stable::library::LibHeader::from_constructor::<
                    ::castor_abi::abi::PluginRootRef,
                >(
                    __castor_erased,
                    ::castor_abi::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    })
}
