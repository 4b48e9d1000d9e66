//! The `#[task]` attribute of [`wpool-guest`](https://docs.rs/wpool-guest):
//! use it through `wpool_guest::task`, whose documentation describes it.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

/// The expected form, shown in every signature error.
const EXPECTED: &str = "expected `fn NAME(input: I) -> Result<O, E>`";

/// Turns `fn NAME(input: I) -> Result<O, E>` into the entry point of a wpool
/// task: `_start` on wasm32-wasip1, the `run` export of the `wpool:task`
/// world on wasm32-wasip2, nothing natively. `#[task(raw)]` passes bytes
/// through instead of JSON.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Which codec the generated entry points use.
#[derive(Debug, Clone, Copy)]
enum Codec {
    Json,
    Raw,
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let codec = parse_codec(attr)?;
    let function: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(e.span(), format!("#[task] goes on a function: {EXPECTED}"))
    })?;
    check_signature(&function)?;

    let name = &function.sig.ident;
    // Errors about the codec's trait bounds (an input that is not
    // `Deserialize`, an error that is not `Display`) point at the function.
    let sig_span = name.span();
    let call = match codec {
        Codec::Json => quote_spanned!(sig_span=> ::wpool_guest::__private::call_json(#name, input)),
        Codec::Raw => quote_spanned!(sig_span=> ::wpool_guest::__private::call_raw(#name, input)),
    };

    Ok(quote! {
        #function

        // On every target, so that a signature the codec cannot serve fails
        // in a native `cargo check` as well, and the function counts as used.
        const _: () = {
            fn __wpool_call(
                input: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::wpool_guest::Failure> {
                #call
            }
            let _: fn(::std::vec::Vec<u8>) -> _ = __wpool_call;

            #[cfg(all(target_os = "wasi", target_env = "p1"))]
            #[allow(
                unsafe_code,
                reason = "a WASI command module's entry point is an exported symbol"
            )]
            #[unsafe(export_name = "_start")]
            extern "C" fn __wpool_start() {
                ::wpool_guest::__private::start(__wpool_call);
            }

            #[cfg(all(target_os = "wasi", target_env = "p2"))]
            #[allow(
                unsafe_code,
                reason = "the component's exports are generated as exported symbols"
            )]
            const _: () = {
                struct __WpoolTask;

                impl ::wpool_guest::__private::bindings::Guest for __WpoolTask {
                    fn run(
                        input: ::std::vec::Vec<u8>,
                    ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                        ::wpool_guest::__private::run_component(__wpool_call, input)
                    }
                }

                ::wpool_guest::__private::bindings::export!(
                    __WpoolTask with_types_in ::wpool_guest::__private::bindings
                );
            };
        };
    })
}

fn parse_codec(attr: TokenStream2) -> syn::Result<Codec> {
    if attr.is_empty() {
        return Ok(Codec::Json);
    }
    let unexpected = |span| {
        syn::Error::new(
            span,
            "unknown argument: expected `#[task]` (JSON input and output) or `#[task(raw)]` (bytes)",
        )
    };
    let ident: syn::Ident = syn::parse2(attr.clone()).map_err(|_| unexpected(attr.span()))?;
    if ident == "raw" {
        Ok(Codec::Raw)
    } else {
        Err(unexpected(ident.span()))
    }
}

fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let error = |tokens: &dyn quote::ToTokens, what: &str| {
        Err(syn::Error::new_spanned(
            tokens,
            format!("#[task] {what}: {EXPECTED}"),
        ))
    };

    if let Some(asyncness) = &sig.asyncness {
        return error(
            asyncness,
            "cannot be `async`; a task runs to completion synchronously",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        return error(unsafety, "cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        return error(
            abi,
            "must use the Rust ABI; the macro generates the exported entry point",
        );
    }
    if let Some(constness) = &sig.constness {
        return error(constness, "cannot be `const`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return error(
            &sig.generics,
            "cannot be generic; name the concrete input and output types",
        );
    }
    if let Some(variadic) = &sig.variadic {
        return error(variadic, "cannot be variadic");
    }

    let mut inputs = sig.inputs.iter();
    match (inputs.next(), inputs.next()) {
        (None, _) => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!(
                    "#[task] takes exactly one argument, the input; this function has none: {EXPECTED}"
                ),
            ));
        }
        (Some(FnArg::Receiver(receiver)), _) => {
            return error(receiver, "cannot take `self`; it is a free function");
        }
        (Some(_), Some(second)) => {
            return error(second, "takes exactly one argument, the input");
        }
        (Some(FnArg::Typed(arg)), None) => {
            if let Type::Reference(reference) = &*arg.ty {
                return error(
                    reference,
                    "takes its input by value (an owned type), not by reference",
                );
            }
            if let Type::ImplTrait(impl_trait) = &*arg.ty {
                return error(
                    impl_trait,
                    "cannot take `impl Trait`; name the concrete input type",
                );
            }
        }
    }

    match &sig.output {
        ReturnType::Default => Err(syn::Error::new(
            sig.paren_token.span.close(),
            format!("#[task] must return a `Result`; this function returns `()`: {EXPECTED}"),
        )),
        ReturnType::Type(_, ty) if !is_result(ty) => error(ty, "must return a `Result`"),
        ReturnType::Type(..) => Ok(()),
    }
}

/// Whether `ty` is spelled as a `Result`: `Result<O, E>`, `std::result::Result<O, E>`,
/// or an alias such as `anyhow::Result<O>` or `io::Result<O>`.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Result"),
        Type::Paren(inner) => is_result(&inner.elem),
        Type::Group(inner) => is_result(&inner.elem),
        _ => false,
    }
}
